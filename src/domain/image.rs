//! The `image` field of a deploy request: a default-image slug or an `https` URL of a disk
//! image, checked so that handing the URL to Fluence cannot be used to reach private networks.
//!
//! The gateway never fetches the URL itself, but Fluence downloads it from inside its own
//! infrastructure, so an unchecked URL is a server-side request forgery (SSRF) vector: cloud
//! metadata endpoints, loopback services, private ranges. The checks here are purely
//! syntactic. They cannot stop a public DNS name from resolving to a private address (DNS
//! rebinding, wildcard services such as `nip.io` with other spellings); they close off every
//! way of *spelling* a private destination directly in the URL.
//!
//! The rules are deliberately stricter than RFC 3986: anything unusual is refused rather than
//! interpreted, because the `url` crate, curl and Fluence's downloader may each interpret an
//! unusual URL differently, and a disagreement between parsers is exactly how SSRF filters are
//! bypassed.

use url::{Host, Url};

/// The longest image URL accepted, in bytes, both as sent and after normalisation.
pub const MAX_IMAGE_URL_LEN: usize = 2048;

/// Fluence accepts these suffixes on osImage (case-insensitive match on the URL path):
pub const IMAGE_SUFFIXES: &[&str] = &[
    ".qcow2", ".img", ".raw", ".raw.xz", ".raw.gz", ".img.xz", ".img.gz",
];

/// The longest default-image slug.
const MAX_SLUG_LEN: usize = 64;

/// The longest host name DNS can carry (RFC 1035, in presentation form without trailing dot).
const MAX_HOST_LEN: usize = 253;

/// The longest DNS label.
const MAX_LABEL_LEN: usize = 63;

/// Top-level domains that are never publicly delegated, so a name under them only resolves
/// inside some private network: exactly where an SSRF wants to land. `arpa` covers
/// `home.arpa`, `in-addr.arpa` and `ip6.arpa`; the rest are RFC 6761/6762 special-use names,
/// ICANN's reserved `internal`, and the common private-network suffixes.
const PRIVATE_TLDS: &[&str] = &[
    "localhost",
    "local",
    "localdomain",
    "internal",
    "intranet",
    "private",
    "corp",
    "home",
    "lan",
    "arpa",
    "test",
    "invalid",
    "onion",
];

/// What the `image` field names: a Fluence default image or a URL Fluence will download.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageRef {
    /// A default-image slug such as `ubuntu-24-04-x64`, passed through unchanged.
    Slug(String),
    /// An `https` URL, in the normalised form produced by the `url` crate.
    Url(String),
}

impl ImageRef {
    /// The slug or URL text, as it is to be sent upstream.
    pub fn as_str(&self) -> &str {
        match self {
            ImageRef::Slug(text) | ImageRef::Url(text) => text,
        }
    }
}

/// Parses the `image` field. Errors are short client-facing messages ("must ...") without the
/// field name, which the caller adds.
pub fn parse_image(text: &str) -> Result<ImageRef, String> {
    if text.is_empty() {
        return Err("must not be empty".to_owned());
    }
    if looks_like_url(text) {
        return parse_url(text).map(ImageRef::Url);
    }
    if is_slug(text) {
        return Ok(ImageRef::Slug(text.to_owned()));
    }
    Err(format!(
        "must be a default image name such as `ubuntu-24-04-x64` (1 to {MAX_SLUG_LEN} lower-case \
         letters, digits and hyphens) or an https URL of a disk image"
    ))
}

/// Whether the text is meant as a URL: a scheme (`:` before any `/`) or `://` anywhere.
/// Deciding this first means a mistyped URL gets a URL error, not a confusing slug error.
fn looks_like_url(text: &str) -> bool {
    if text.contains("://") {
        return true;
    }
    match (text.find(':'), text.find('/')) {
        (Some(colon), Some(slash)) => colon < slash,
        (Some(_), None) => true,
        _ => false,
    }
}

/// `[a-z0-9-]{1,64}` starting with a letter or digit: the shape of Fluence's default-image
/// slugs. A slug can never contain `://` as `:` and `/` are outside the alphabet.
fn is_slug(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= MAX_SLUG_LEN
        && !text.starts_with('-')
        && text
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Validates an image URL and returns the `url` crate's normalised form of it.
///
/// The raw text is checked before parsing because the `url` crate repairs and normalises a
/// great deal (backslashes become slashes, `0x7f000001` becomes `127.0.0.1`, percent-encoded
/// and full-width host characters are decoded, tabs and newlines are silently removed), and a
/// filter that only looks at the repaired form approves text that another parser reads
/// differently. After parsing, the result is checked again as the form Fluence will receive.
fn parse_url(text: &str) -> Result<String, String> {
    if text.len() > MAX_IMAGE_URL_LEN {
        return Err(format!(
            "must be at most {MAX_IMAGE_URL_LEN} characters long"
        ));
    }
    if text
        .chars()
        .any(|c| c.is_control() || c.is_whitespace() || c == '\\')
    {
        return Err("must not contain spaces, control characters or backslashes".to_owned());
    }
    // Non-ASCII text is where IDNA mapping and look-alike characters live (full-width dots,
    // `ｌｏｃａｌｈｏｓｔ`); requiring percent-encoding keeps what we check and what is fetched
    // the same bytes.
    if !text.is_ascii() {
        return Err("must be ASCII; percent-encode any other characters".to_owned());
    }

    let rest = strip_https_scheme(text)?;
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path_and_more) = rest.split_at(authority_end);
    let host = check_authority(authority)?;

    // Fragments are never sent to the server, so one on an image URL is at best a mistake and
    // at worst an attempt to make the suffix check see a different "path" than the downloader.
    if path_and_more.contains('#') {
        return Err("must not contain a fragment (`#...`)".to_owned());
    }

    let url = Url::parse(text).map_err(|_| "must be a valid https URL".to_owned())?;
    check_parsed(&url, &host)?;

    let normalised = String::from(url);
    if normalised.len() > MAX_IMAGE_URL_LEN {
        return Err(format!(
            "must be at most {MAX_IMAGE_URL_LEN} characters long"
        ));
    }
    Ok(normalised)
}

/// Requires the text to start with `https://` and returns what follows.
///
/// An upper-case scheme (`HTTPS://`) is accepted: RFC 3986 makes schemes case-insensitive and
/// the `url` crate lower-cases it, so the URL handed on is `https://` either way. What is not
/// accepted is `https:` without the two slashes: the `url` crate would guess an authority
/// there, other parsers would not.
fn strip_https_scheme(text: &str) -> Result<&str, String> {
    const PREFIX: &str = "https://";
    match text.get(..PREFIX.len()) {
        Some(prefix) if prefix.eq_ignore_ascii_case(PREFIX) => Ok(&text[PREFIX.len()..]),
        _ => Err("must be an https URL (`https://...`); other schemes are not allowed".to_owned()),
    }
}

/// Checks the raw authority (`host[:port]`) and returns the lower-cased host.
fn check_authority(authority: &str) -> Result<String, String> {
    // `user:pass@host` makes people (and some filters) read the wrong part as the host, and
    // `%40` is an `@` that some downstream parsers decode. A `%` anywhere in the authority is
    // refused outright: the `url` crate percent-decodes host names (`%6c%6fcalhost`).
    if authority.contains('@') {
        return Err("must not contain user credentials (`user@` or `user:password@`)".to_owned());
    }
    if authority.contains('%') {
        return Err("must not contain percent-encoding in the host".to_owned());
    }
    if authority.starts_with('[') {
        return Err("must name its host by a DNS name, not an IP address".to_owned());
    }
    let (host, port) = match authority.split_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (authority, None),
    };
    // Images come from public HTTPS origins on the standard port. A non-standard port is the
    // classic way to turn a downloader into a probe of internal services (admin consoles,
    // databases, the kubelet), so only an explicit `:443` is tolerated.
    if port.is_some_and(|port| port != "443") {
        return Err("must not name a port other than 443".to_owned());
    }
    check_host(&host.to_ascii_lowercase())?;
    Ok(host.to_ascii_lowercase())
}

/// Checks a lower-cased host name: a public DNS name, never an IP address in any spelling.
fn check_host(host: &str) -> Result<(), String> {
    const NOT_IP: &str = "must name its host by a DNS name, not an IP address";
    if host.is_empty() {
        return Err("must name a host".to_owned());
    }
    if host.len() > MAX_HOST_LEN {
        return Err(format!(
            "must have a host name of at most {MAX_HOST_LEN} characters"
        ));
    }
    let labels: Vec<&str> = host.split('.').collect();
    // An all-digit or `0x` last label catches every numeric IPv4 spelling that browsers and
    // curl accept (`2130706433`, `0x7f000001`, `0177.0.0.1`, `127.1`, `0x7f.1`), because a
    // real top-level domain is never numeric. It is checked before the label rules so the
    // message names the actual problem.
    let last = labels.last().copied().unwrap_or_default();
    let last = if last.is_empty() && labels.len() > 1 {
        labels[labels.len() - 2]
    } else {
        last
    };
    if !last.is_empty() && (last.bytes().all(|b| b.is_ascii_digit()) || last.starts_with("0x")) {
        return Err(NOT_IP.to_owned());
    }
    // Wildcard DNS services (`127.0.0.1.nip.io`) turn an embedded dotted quad into a private
    // address; no legitimate image host carries four numeric labels in a row.
    if labels.windows(4).any(|w| {
        w.iter()
            .all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_digit()))
    }) {
        return Err(NOT_IP.to_owned());
    }
    // `localhost.` and `example.com.` are the same names to DNS as without the dot, but
    // different strings to suffix checks (here and in whatever else inspects the URL).
    if host.ends_with('.') {
        return Err("must not end its host name with a dot".to_owned());
    }
    // Empty labels: `example..com`, `.example.com`.
    if labels.iter().any(|label| {
        label.is_empty()
            || label.len() > MAX_LABEL_LEN
            || label.starts_with('-')
            || label.ends_with('-')
            || !label
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    }) {
        return Err(
            "must have a host name made of dot-separated labels of letters, digits and \
             hyphens (use punycode `xn--` for international names)"
                .to_owned(),
        );
    }
    if PRIVATE_TLDS.contains(&last) {
        return Err("must not point at a local or private host name".to_owned());
    }
    // A dotless name is resolved through search domains, i.e. inside whatever network the
    // downloader sits in.
    if labels.len() < 2 {
        return Err("must have a fully qualified host name (with a dot)".to_owned());
    }
    Ok(())
}

/// Re-checks the parsed URL: the form Fluence receives must agree with what was checked raw.
fn check_parsed(url: &Url, host: &str) -> Result<(), String> {
    if url.scheme() != "https" {
        return Err(
            "must be an https URL (`https://...`); other schemes are not allowed".to_owned(),
        );
    }
    match url.host() {
        Some(Host::Domain(domain)) if domain == host => {}
        Some(Host::Ipv4(_) | Host::Ipv6(_)) => {
            return Err("must name its host by a DNS name, not an IP address".to_owned());
        }
        // The parser changed the host (IDNA mapping or some decoding): refuse rather than
        // guess which of the two names would be fetched.
        _ => return Err("must have a plain ASCII DNS host name".to_owned()),
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not contain user credentials (`user@` or `user:password@`)".to_owned());
    }
    // `url` drops the scheme's default port, so any port still present is a non-443 one.
    if url.port().is_some() {
        return Err("must not name a port other than 443".to_owned());
    }
    if url.fragment().is_some() {
        return Err("must not contain a fragment (`#...`)".to_owned());
    }
    let path = url.path().to_ascii_lowercase();
    if !IMAGE_SUFFIXES.iter().any(|suffix| path.ends_with(suffix)) {
        return Err(format!(
            "must be a URL whose path ends in one of {}",
            IMAGE_SUFFIXES.join(", ")
        ));
    }
    Ok(())
}

/// Image values that must always be refused: SSRF spellings, bad schemes, bad suffixes. Public
/// so integration tests (and the HTTP layer's tests) can run the same corpus end to end; it is
/// harmless data.
#[doc(hidden)]
pub const HOSTILE_IMAGE_CORPUS: &[&str] = &[
    // Empty and non-slugs.
    "",
    "Ubuntu-24-04-x64",
    "-ubuntu",
    "ubuntu_24",
    "ubuntu 24",
    "ubuntu/24.img",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    // Schemes other than https.
    "http://127.0.0.1/x.qcow2",
    "http://169.254.169.254/latest/meta-data/",
    "http://example.com/a.img",
    "file:///etc/passwd",
    "file://example.com/a.img",
    "gopher://x/",
    "gopher://example.com:70/_a.img",
    "ftp://example.com/a.img",
    "data:application/octet-stream;base64,AAAA.img",
    "javascript:alert(1)//a.img",
    "dict://example.com:11211/a.img",
    "ldap://example.com/a.img",
    "httpss://example.com/a.img",
    "https:example.com/a.img",
    "https:/example.com/a.img",
    "https:///example.com/a.img",
    "//example.com/a.img",
    // IP literals, in every spelling.
    "https://169.254.169.254/a.img",
    "https://127.0.0.1/a.img",
    "https://10.0.0.1/a.img",
    "https://100.64.0.1/a.img",
    "https://192.168.1.1/a.img",
    "https://172.16.0.1/a.img",
    "https://0.0.0.0/a.img",
    "https://8.8.8.8/a.img",
    "https://[::1]/a.img",
    "https://[::ffff:127.0.0.1]/a.img",
    "https://[fd00::1]/a.img",
    "https://[fe80::1%25eth0]/a.img",
    "https://0x7f000001/a.img",
    "https://0x7F000001/a.img",
    "https://2130706433/a.img",
    "https://017700000001/a.img",
    "https://0177.0.0.1/a.img",
    "https://127.1/a.img",
    "https://0x7f.1/a.img",
    "https://127.0.0.1./a.img",
    "https://0x7f000001./a.img",
    "https://169.254.169.254.nip.io/a.img",
    "https://a.0x7f/a.img",
    // Credentials and authority confusion.
    "https://user:pass@host.example/a.img",
    "https://user@host.example/a.img",
    "https://@host.example/a.img",
    "https://host.example%40evil.com/a.img",
    "https://user%40x@host.example/a.img",
    "https://example.com\\@evil.com/a.img",
    "https://example.com\\a.img",
    "https://%6c%6fcalhost/a.img",
    "https://%65xample.com/a.img",
    // Private and special-use names.
    "https://localhost/a.img",
    "https://LOCALHOST/a.img",
    "https://localhost./a.img",
    "https://foo.localhost/a.img",
    "https://printer.local/a.img",
    "https://metadata.google.internal/a.img",
    "https://metadata/a.img",
    "https://host.localdomain/a.img",
    "https://nas.home.arpa/a.img",
    "https://1.0.0.127.in-addr.arpa/a.img",
    "https://1.0.ip6.arpa/a.img",
    "https://router.lan/a.img",
    "https://intranet/a.img",
    "https://example.com./a.img",
    "https://example..com/a.img",
    "https://.example.com/a.img",
    "https://-bad.example.com/a.img",
    "https://bad-.example.com/a.img",
    "https://under_score.example.com/a.img",
    "https://aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.example.com/a.img",
    // Ports.
    "https://example.com:8080/a.img",
    "https://example.com:80/a.img",
    "https://example.com:0443/a.img",
    "https://example.com:/a.img",
    "https://example.com:443:443/a.img",
    "https://example.com:10250/a.img",
    // Suffixes, fragments.
    "https://example.com/a.iso",
    "https://example.com/a.qcow2#frag",
    "https://example.com/a.qcow2#",
    "https://example.com/a.img/",
    "https://example.com/a.img/..",
    "https://example.com/?x=a.img",
    "https://example.com",
    "https://example.com/a.img.exe",
    // Whitespace, control characters, non-ASCII.
    "https://exa mple.com/a.img",
    " https://example.com/a.img",
    "https://example.com/a.img ",
    "https://example.com/a\t.img",
    "https://exam\nple.com/a.img",
    "https://example.com/a.img\r\n",
    "https://example.com/\0a.img",
    "https://exa\u{7f}mple.com/a.img",
    "https://b\u{fc}cher.example/a.img",
    "https://\u{ff4c}\u{ff4f}\u{ff43}\u{ff41}\u{ff4c}\u{ff48}\u{ff4f}\u{ff53}\u{ff54}/a.img",
    "https://example\u{3002}com/a.img",
    "https://example.com/\u{e9}.img",
    "https://example.com/a.img\u{200b}",
];

#[cfg(test)]
#[allow(clippy::expect_used, clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A URL longer than the limit that is otherwise fine.
    fn overlong_url() -> String {
        format!("https://example.com/{}.img", "a".repeat(MAX_IMAGE_URL_LEN))
    }

    #[test]
    fn the_hostile_corpus_is_refused() {
        assert!(HOSTILE_IMAGE_CORPUS.len() >= 40);
        for text in HOSTILE_IMAGE_CORPUS {
            let result = parse_image(text);
            assert!(result.is_err(), "{text:?} was accepted as {result:?}");
        }
    }

    #[test]
    fn overlong_urls_are_refused() {
        let long = overlong_url();
        assert_eq!(
            parse_image(&long),
            Err("must be at most 2048 characters long".to_owned())
        );
        // Exactly at the limit is fine.
        let prefix = "https://example.com/";
        let fill = MAX_IMAGE_URL_LEN - prefix.len() - ".img".len();
        let exact = format!("{prefix}{}.img", "a".repeat(fill));
        assert_eq!(exact.len(), MAX_IMAGE_URL_LEN);
        assert!(parse_image(&exact).is_ok());
        // A 10 MB value is refused quickly rather than parsed.
        assert!(parse_image(&format!("https://{}", "a".repeat(10_000_000))).is_err());
    }

    #[test]
    fn overlong_hosts_are_refused() {
        let label = "a".repeat(62);
        let host = format!("{label}.{label}.{label}.{label}.com");
        assert_eq!(host.len(), MAX_HOST_LEN + 2);
        assert!(parse_image(&format!("https://{host}/a.img")).is_err());
        let host = format!("{label}.{label}.{label}.{}.com", "b".repeat(60));
        assert_eq!(host.len(), MAX_HOST_LEN);
        assert!(parse_image(&format!("https://{host}/a.img")).is_ok());
    }

    #[test]
    fn good_urls_and_slugs_are_accepted() {
        let good = [
            (
                "https://cloud-images.ubuntu.com/noble/current/noble-server-cloudimg-amd64.img",
                "https://cloud-images.ubuntu.com/noble/current/noble-server-cloudimg-amd64.img",
            ),
            (
                "https://download.example.org/images/debian-12.qcow2?sig=abc",
                "https://download.example.org/images/debian-12.qcow2?sig=abc",
            ),
            (
                "https://x.example.com/a.raw.xz",
                "https://x.example.com/a.raw.xz",
            ),
            ("https://x.example.com/a.raw", "https://x.example.com/a.raw"),
            (
                "https://x.example.com/a.raw.gz",
                "https://x.example.com/a.raw.gz",
            ),
            (
                "https://x.example.com/a.img.xz",
                "https://x.example.com/a.img.xz",
            ),
            (
                "https://x.example.com/a.img.gz",
                "https://x.example.com/a.img.gz",
            ),
            (
                "https://x.example.com/A.QCOW2",
                "https://x.example.com/A.QCOW2",
            ),
            // An explicit default port is dropped by normalisation.
            ("https://example.com:443/a.img", "https://example.com/a.img"),
            // Upper-case scheme and host are lower-cased.
            (
                "HTTPS://Cloud.Debian.ORG/images/debian-12.qcow2",
                "https://cloud.debian.org/images/debian-12.qcow2",
            ),
            // Punycode is an ordinary ASCII name.
            (
                "https://xn--bcher-kva.example/a.img",
                "https://xn--bcher-kva.example/a.img",
            ),
            // Dot segments are resolved; the check applies to the resolved path.
            (
                "https://example.com/x/../a.img",
                "https://example.com/a.img",
            ),
            (
                "https://s3.eu-west-1.amazonaws.com/bucket/a.img?X-Amz-Signature=ab%2Fcd&X-Amz-Expires=3600",
                "https://s3.eu-west-1.amazonaws.com/bucket/a.img?X-Amz-Signature=ab%2Fcd&X-Amz-Expires=3600",
            ),
            // A digit-leading label that is not the last is a normal name.
            (
                "https://1password.example.com/a.img",
                "https://1password.example.com/a.img",
            ),
        ];
        for (text, normalised) in good {
            assert_eq!(
                parse_image(text),
                Ok(ImageRef::Url(normalised.to_owned())),
                "{text:?}"
            );
        }
        for slug in ["ubuntu-24-04-x64", "debian-12-x64", "a", "0", "x-"] {
            assert_eq!(parse_image(slug), Ok(ImageRef::Slug(slug.to_owned())));
        }
        assert!(parse_image(&"a".repeat(64)).is_ok());
        assert!(parse_image(&"a".repeat(65)).is_err());
    }

    #[test]
    fn messages_name_the_problem() {
        let cases = [
            ("http://example.com/a.img", "must be an https URL"),
            ("https://10.0.0.1/a.img", "not an IP address"),
            ("https://0x7f000001/a.img", "not an IP address"),
            ("https://[::1]/a.img", "not an IP address"),
            ("https://u@example.com/a.img", "credentials"),
            ("https://localhost/a.img", "local or private"),
            ("https://metadata/a.img", "with a dot"),
            ("https://example.com:8080/a.img", "port other than 443"),
            ("https://example.com/a.iso", "ends in one of .qcow2"),
            ("https://example.com/a.img#x", "fragment"),
            ("https://example.com/a b.img", "spaces"),
            ("Ubuntu", "default image name"),
            ("", "must not be empty"),
        ];
        for (text, fragment) in cases {
            let message = parse_image(text).expect_err(text);
            assert!(message.contains(fragment), "{text:?}: {message}");
            assert!(message.starts_with("must"), "{text:?}: {message}");
        }
    }

    #[test]
    fn image_refs_expose_their_text() {
        assert_eq!(
            ImageRef::Slug("debian-12-x64".to_owned()).as_str(),
            "debian-12-x64"
        );
        assert_eq!(
            ImageRef::Url("https://a.b/c.img".to_owned()).as_str(),
            "https://a.b/c.img"
        );
    }

    proptest! {
        #[test]
        fn arbitrary_text_never_panics(text in any::<String>()) {
            let _ = parse_image(&text);
        }

        #[test]
        fn url_like_text_never_panics_and_accepted_urls_are_safe(
            scheme in prop::sample::select(vec!["https://", "HTTPS://", "http://", "https:", ""]),
            authority in "[a-zA-Z0-9.:@%\\[\\]_-]{0,40}",
            path in "[a-zA-Z0-9./%?#=&\\\\-]{0,40}",
            suffix in prop::sample::select(IMAGE_SUFFIXES.to_vec()),
        ) {
            let text = format!("{scheme}{authority}/{path}{suffix}");
            if let Ok(ImageRef::Url(url)) = parse_image(&text) {
                prop_assert!(url.starts_with("https://"));
                let rest = &url["https://".len()..];
                let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
                prop_assert!(!authority.contains('@'));
                let parsed = Url::parse(&url).unwrap();
                prop_assert!(matches!(parsed.host(), Some(Host::Domain(_))));
                prop_assert!(parsed.port().is_none());
                prop_assert!(url.len() <= MAX_IMAGE_URL_LEN);
            }
        }

        #[test]
        fn accepted_values_are_safe(text in "\\PC{0,80}") {
            match parse_image(&text) {
                Ok(ImageRef::Url(url)) => {
                    prop_assert!(url.starts_with("https://"));
                    let parsed = Url::parse(&url).unwrap();
                    prop_assert!(matches!(parsed.host(), Some(Host::Domain(_))));
                    prop_assert!(parsed.username().is_empty() && parsed.password().is_none());
                }
                Ok(ImageRef::Slug(slug)) => prop_assert!(is_slug(&slug)),
                Err(message) => prop_assert!(message.starts_with("must")),
            }
        }
    }
}
