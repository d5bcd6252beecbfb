//! Extractors whose every rejection is a problem+json naming what is wrong: the caller
//! ([`Principal`]), JSON bodies ([`JsonBody`]), query strings ([`Query`]), and the request id.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use axum::body::Bytes;
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::auth::cache::Lookup;
use crate::auth::{self, BOOTSTRAP_ACTOR, Principal, Role};
use crate::domain::team::TeamId;
use crate::error::ApiError;
use crate::state::AppState;
use crate::store::keys;

/// Query parameters that would carry a credential in the URL, where proxies and logs keep it.
/// A request with one is refused even if its header holds a good key.
const CREDENTIAL_PARAMS: [&str; 6] = [
    "api_key",
    "apikey",
    "key",
    "token",
    "access_token",
    "authorization",
];

impl FromRequestParts<AppState> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        // Already authenticated (and counted against its rate limit) by an outer layer.
        if let Some(principal) = parts.extensions.get::<Principal>() {
            return Ok(principal.clone());
        }
        let address = client_address(parts);
        // Checked before any credential is evaluated: a blocked address learns nothing.
        state
            .limits
            .check_blocked(address)
            .map_err(ApiError::RateLimited)?;
        match authenticate(parts, state).await? {
            Some(principal) => {
                state
                    .limits
                    .check_key(&principal.actor)
                    .map_err(ApiError::RateLimited)?;
                if let Some(team) = &principal.team {
                    state
                        .limits
                        .check_team(team.as_str())
                        .map_err(ApiError::RateLimited)?;
                }
                Ok(principal)
            }
            None => {
                // Failed attempts are limited per client address, more strictly than use.
                state
                    .limits
                    .check_failed_auth(address)
                    .map_err(ApiError::RateLimited)?;
                Err(ApiError::Unauthorized)
            }
        }
    }
}

/// An authenticated admin: team keys get 403 before anything else of the request is read.
#[derive(Debug, Clone)]
pub struct AdminPrincipal(pub Principal);

impl FromRequestParts<AppState> for AdminPrincipal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let principal = Principal::from_request_parts(parts, state).await?;
        if principal.is_admin() {
            Ok(AdminPrincipal(principal))
        } else {
            Err(ApiError::Forbidden("This needs an admin key.".into()))
        }
    }
}

/// `Ok(None)` for every kind of refusal, so that all of them get the same answer.
async fn authenticate(parts: &Parts, state: &AppState) -> Result<Option<Principal>, ApiError> {
    if credential_in_query(parts.uri.query()) {
        return Ok(None);
    }
    let Some(token) = bearer_token(&parts.headers) else {
        return Ok(None);
    };
    if state.bootstrap.matches(token) {
        return Ok(Some(Principal {
            actor: BOOTSTRAP_ACTOR.to_owned(),
            role: Role::Admin,
            team: None,
        }));
    }
    let Some((prefix, secret)) = auth::split_token(token) else {
        return Ok(None);
    };
    let record = match state.keys.get(prefix) {
        Lookup::Hit(record) => Some(record),
        Lookup::Miss(generation) => {
            let mut conn = state.store.pool().acquire().await?;
            let record = keys::by_prefix(&mut conn, prefix).await?;
            if let Some(record) = &record {
                state.keys.keep(generation, record);
            }
            record
        }
    };
    if !auth::secret_matches(record.as_ref(), secret) {
        return Ok(None);
    }
    let Some(record) = record else {
        return Ok(None);
    };
    // Expiry is judged on every request; a revocation empties the cache as it commits.
    if !auth::is_active(&record, chrono::Utc::now()) {
        return Ok(None);
    }
    let role = record.role;
    let team = match record.team_id.as_deref() {
        Some(team) => Some(TeamId::parse(team).map_err(ApiError::internal)?),
        None => None,
    };
    Ok(Some(Principal {
        actor: record.id,
        role,
        team,
    }))
}

/// The token of exactly one `Authorization: Bearer <token>` header, taken literally: no
/// surrounding whitespace, no other scheme spelling, no second header.
fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let value = values.next()?;
    if values.next().is_some() {
        return None;
    }
    let token = value.to_str().ok()?.strip_prefix("Bearer ")?;
    let clean = !token.is_empty() && token.bytes().all(|b| b.is_ascii_graphic());
    clean.then_some(token)
}

/// A credential-like parameter name (after percent-decoding), or any value shaped like a key.
fn credential_in_query(query: Option<&str>) -> bool {
    query.is_some_and(|query| {
        form_urlencoded::parse(query.as_bytes()).any(|(name, value)| {
            CREDENTIAL_PARAMS
                .iter()
                .any(|param| name.eq_ignore_ascii_case(param))
                || auth::split_token(&value).is_some()
        })
    })
}

fn client_address(parts: &Parts) -> IpAddr {
    parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |info| info.0.ip())
}

/// The request id the request-id layer assigned (or the client sent).
#[derive(Debug, Clone, Default)]
pub struct RequestId(pub Option<String>);

impl<S: Send + Sync> FromRequestParts<S> for RequestId {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(RequestId(
            parts
                .headers
                .get(super::REQUEST_ID)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
        ))
    }
}

/// A JSON body, read but not yet parsed, so that a handler can check who is asking before it
/// says anything about the body. Refusals here: 415 without a JSON content type, 413 over the
/// size limit (checked before any parsing).
#[derive(Debug, Clone)]
pub struct JsonBody(Bytes);

impl JsonBody {
    /// 400 `malformed_json` for what is not JSON; 422 `validation_failed` naming the field for
    /// JSON of the wrong shape (wrong type, unknown, missing or duplicate field).
    /// Every body of this API is a JSON object; serde would otherwise read a struct from a
    /// positional array too.
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, ApiError> {
        let first = self.0.iter().find(|b| !b.is_ascii_whitespace());
        if first.is_some_and(|b| *b != b'{') {
            return Err(ApiError::field("body", "must be a JSON object"));
        }
        parse_json(&self.0)
    }
}

impl<S: Send + Sync> FromRequest<S> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        if !is_json(request.headers()) {
            return Err(ApiError::UnsupportedMediaType);
        }
        Bytes::from_request(request, state)
            .await
            .map(JsonBody)
            .map_err(|rejection| match rejection.status() {
                StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge,
                _ => ApiError::MalformedJson("the body could not be read".into()),
            })
    }
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|essence| essence.trim().to_ascii_lowercase())
        .is_some_and(|essence| {
            essence == "application/json"
                || (essence.starts_with("application/") && essence.ends_with("+json"))
        })
}

/// Parses a whole JSON document into `T`, naming the field at fault.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
        let path = error.path().to_string();
        let inner = error.into_inner();
        if inner.is_data() {
            ApiError::field(field_at(&path, &inner.to_string()), inner.to_string())
        } else {
            ApiError::MalformedJson(inner.to_string())
        }
    })?;
    deserializer
        .end()
        .map_err(|e| ApiError::MalformedJson(e.to_string()))?;
    Ok(value)
}

/// The field an error is about: serde reports a missing, unknown or duplicate field at its
/// parent's path, with the field's name in the message.
fn field_at(path: &str, message: &str) -> String {
    let named = ["missing field `", "unknown field `", "duplicate field `"]
        .iter()
        .find_map(|lead| message.strip_prefix(lead))
        .and_then(|rest| rest.split('`').next());
    match (path, named) {
        (".", Some(name)) => name.to_owned(),
        (".", None) => "body".to_owned(),
        // An unknown field is already at its own path; a missing one at its parent's.
        (path, Some(name)) if path == name || path.ends_with(&format!(".{name}")) => {
            path.to_owned()
        }
        (parent, Some(name)) => format!("{parent}.{name}"),
        (path, None) => path.to_owned(),
    }
}

/// For an optional object field: `null` and absence are `None`, an object is decoded, and
/// anything else (serde would read a struct from a positional array) is refused.
pub fn nullable_object<'de, T, D>(deserializer: D) -> Result<Option<T>, D::Error>
where
    T: serde::Deserialize<'de>,
    D: serde::Deserializer<'de>,
{
    struct Visitor<T>(std::marker::PhantomData<T>);

    impl<'de, T: serde::Deserialize<'de>> serde::de::Visitor<'de> for Visitor<T> {
        type Value = Option<T>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("an object or null")
        }

        fn visit_unit<E: serde::de::Error>(self) -> Result<Option<T>, E> {
            Ok(None)
        }

        fn visit_none<E: serde::de::Error>(self) -> Result<Option<T>, E> {
            Ok(None)
        }

        fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Option<T>, A::Error> {
            T::deserialize(serde::de::value::MapAccessDeserializer::new(map)).map(Some)
        }
    }

    deserializer.deserialize_any(Visitor(std::marker::PhantomData))
}

/// For a PATCH field: absent is `None` (with `#[serde(default)]`), `null` is `Some(None)`, a
/// value is `Some(Some(value))`, so "leave it" and "clear it" stay distinct.
pub fn patch_field<'de, T, D>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    T: serde::Deserialize<'de>,
    D: serde::Deserializer<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

/// [`patch_field`] for an object: `null` clears it, a positional array is refused.
pub fn patch_object<'de, T, D>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    T: serde::Deserialize<'de>,
    D: serde::Deserializer<'de>,
{
    nullable_object(deserializer).map(Some)
}

/// A query string. A bad one is 422 `validation_failed` naming the parameter.
#[derive(Debug, Clone)]
pub struct Query<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        let query = parts.uri.query().unwrap_or_default();
        let deserializer =
            serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
        serde_path_to_error::deserialize(deserializer)
            .map(Query)
            .map_err(|error| {
                let path = error.path().to_string();
                let message = error.into_inner().to_string();
                let field = match field_at(&path, &message).as_str() {
                    "body" => "query".to_owned(),
                    field => field.to_owned(),
                };
                ApiError::field(field, message)
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_one_literal_bearer_header_carries_a_token() {
        let mut headers = HeaderMap::new();
        assert_eq!(bearer_token(&headers), None);
        for bad in [
            "bearer abc",
            "Bearer  abc",
            "Bearer abc ",
            "Basic abc",
            "Bearer ",
            "Bearerabc",
        ] {
            headers.insert(
                header::AUTHORIZATION,
                bad.parse().unwrap_or_else(|e| panic!("{e}")),
            );
            assert_eq!(bearer_token(&headers), None, "{bad}");
        }
        headers.insert(
            header::AUTHORIZATION,
            "Bearer abc".parse().unwrap_or_else(|e| panic!("{e}")),
        );
        assert_eq!(bearer_token(&headers), Some("abc"));
        headers.append(
            header::AUTHORIZATION,
            "Bearer abc".parse().unwrap_or_else(|e| panic!("{e}")),
        );
        assert_eq!(bearer_token(&headers), None, "two headers");
    }

    #[test]
    fn a_credential_in_the_query_string_is_noticed() {
        assert!(credential_in_query(Some("limit=5&api_key=x")));
        assert!(credential_in_query(Some("TOKEN=x")));
        assert!(credential_in_query(Some("api%5Fkey=x")));
        assert!(credential_in_query(Some("%74oken=x")));
        let key = format!("fgw_0123456789abcdef_{}", "a".repeat(43));
        assert!(credential_in_query(Some(&format!("q={key}"))));
        assert!(!credential_in_query(Some("limit=5&cursor=abc")));
        assert!(!credential_in_query(None));
    }

    #[test]
    fn json_errors_name_the_field() {
        #[derive(Debug, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct Inner {
            cap: String,
        }
        #[derive(Debug, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct Outer {
            budget: Inner,
        }
        let error = parse_json::<Outer>(br#"{"budget": {"cap": 5}}"#).err();
        match error {
            Some(ApiError::Validation(fields)) => assert_eq!(fields[0].field, "budget.cap"),
            other => panic!("{other:?}"),
        }
        match parse_json::<Outer>(br#"{"budget": {}}"#).err() {
            Some(ApiError::Validation(fields)) => assert_eq!(fields[0].field, "budget.cap"),
            other => panic!("{other:?}"),
        }
        match parse_json::<Outer>(br#"{"budget": {"cap": "1"}, "is_admin": true}"#).err() {
            Some(ApiError::Validation(fields)) => assert_eq!(fields[0].field, "is_admin"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            parse_json::<Outer>(b"{\"budget\": "),
            Err(ApiError::MalformedJson(_))
        ));
        assert!(matches!(
            parse_json::<Outer>(br#"{"budget": {"cap": "5"}} trailing"#),
            Err(ApiError::MalformedJson(_))
        ));
    }
}
