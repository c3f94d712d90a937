//! The token service of the Docker token spec: `GET /token` with optional Basic auth and
//! repeated `scope`, the OAuth2-style `POST /token` form, and the JWKS document.

use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::{Form, Json};
use serde::Deserialize;

use super::{AppState, ClientAddr};
use crate::auth::{basic_credentials, IssuedToken};
use crate::oci::{ErrorCode, RegistryError};

fn token_response(t: IssuedToken) -> Response {
    let issued_at = chrono::DateTime::from_timestamp(t.claims.iat as i64, 0).unwrap_or_default().to_rfc3339();
    Json(serde_json::json!({
        "token": t.token,
        "access_token": t.token,
        "expires_in": t.claims.exp - t.claims.iat,
        "issued_at": issued_at,
    }))
    .into_response()
}

pub async fn get_token(
    State(st): State<AppState>,
    client: ClientAddr,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Result<Response, RegistryError> {
    let q = super::handlers::Query::parse(q.as_deref());
    let scopes = q.all("scope");
    let creds = basic_credentials(&headers)?;
    let t = st.auth.issue(client, creds, q.get("service"), &scopes).await?;
    Ok(token_response(t))
}

#[derive(Deserialize)]
pub struct TokenForm {
    grant_type: String,
    service: Option<String>,
    #[allow(dead_code)]
    client_id: Option<String>,
    scope: Option<String>,
    username: Option<String>,
    password: Option<String>,
}

pub async fn post_token(
    State(st): State<AppState>,
    client: ClientAddr,
    Form(f): Form<TokenForm>,
) -> Result<Response, RegistryError> {
    let creds = match f.grant_type.as_str() {
        "password" => match (f.username, f.password) {
            (Some(u), Some(p)) => Some((u, p)),
            _ => return Err(RegistryError::new(ErrorCode::Unauthorized, "username and password are required")),
        },
        other => return Err(RegistryError::new(ErrorCode::Unsupported, format!("unsupported grant_type {other:?}"))),
    };
    let scopes: Vec<String> = f.scope.into_iter().collect();
    let t = st.auth.issue(client, creds, f.service.as_deref(), &scopes).await?;
    Ok(token_response(t))
}

pub async fn jwks(State(st): State<AppState>) -> Json<serde_json::Value> {
    Json(st.auth.keys.jwks())
}
