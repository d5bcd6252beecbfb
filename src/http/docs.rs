//! `GET /docs`: a page that renders `/openapi.json`. It is self-contained (no script from a
//! CDN), so it works on a machine without internet access.

use axum::response::Html;

const PAGE: &str = include_str!("docs.html");

pub async fn page() -> Html<&'static str> {
    Html(PAGE)
}
