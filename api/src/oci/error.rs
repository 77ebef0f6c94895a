//! Every OCI error code berth sends, its HTTP status, and the JSON envelope
//! `{"errors":[{"code","message","detail"}]}`, plus the conversions from lower-layer
//! errors. Internal detail is logged here and never sent to the client.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use berth_blobstore::BlobStoreError;
use berth_consensus::ConsensusError;
use serde_json::json;

/// An OCI distribution error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    BlobUnknown,
    BlobUploadInvalid,
    BlobUploadUnknown,
    DigestInvalid,
    ManifestBlobUnknown,
    ManifestInvalid,
    ManifestUnknown,
    NameInvalid,
    NameUnknown,
    SizeInvalid,
    TagInvalid,
    Unauthorized,
    Denied,
    Unsupported,
    TooManyRequests,
    /// A chunk or range that does not line up with what the server has.
    RangeInvalid,
    /// Manifest larger than the limit.
    ManifestTooLarge,
    /// Disk space exhausted on the storage node.
    StorageFull,
    /// Metadata or storage temporarily unavailable (no quorum, shutting down).
    Unavailable,
    /// A bug or an unexpected failure; detail goes to the log only.
    Internal,
}

impl Code {
    pub fn as_str(self) -> &'static str {
        match self {
            Code::BlobUnknown => "BLOB_UNKNOWN",
            Code::BlobUploadInvalid | Code::RangeInvalid => "BLOB_UPLOAD_INVALID",
            Code::BlobUploadUnknown => "BLOB_UPLOAD_UNKNOWN",
            Code::DigestInvalid => "DIGEST_INVALID",
            Code::ManifestBlobUnknown => "MANIFEST_BLOB_UNKNOWN",
            Code::ManifestInvalid => "MANIFEST_INVALID",
            Code::ManifestUnknown => "MANIFEST_UNKNOWN",
            Code::NameInvalid => "NAME_INVALID",
            Code::NameUnknown => "NAME_UNKNOWN",
            Code::SizeInvalid | Code::ManifestTooLarge => "SIZE_INVALID",
            Code::TagInvalid => "TAG_INVALID",
            Code::Unauthorized => "UNAUTHORIZED",
            Code::Denied => "DENIED",
            Code::Unsupported => "UNSUPPORTED",
            Code::TooManyRequests => "TOOMANYREQUESTS",
            Code::StorageFull => "STORAGE_FULL",
            Code::Unavailable => "UNAVAILABLE",
            Code::Internal => "UNKNOWN",
        }
    }

    pub fn status(self) -> StatusCode {
        match self {
            Code::BlobUnknown
            | Code::BlobUploadUnknown
            | Code::ManifestUnknown
            | Code::NameUnknown => StatusCode::NOT_FOUND,
            Code::BlobUploadInvalid
            | Code::DigestInvalid
            | Code::ManifestBlobUnknown
            | Code::ManifestInvalid
            | Code::NameInvalid
            | Code::SizeInvalid
            | Code::TagInvalid => StatusCode::BAD_REQUEST,
            Code::Unauthorized => StatusCode::UNAUTHORIZED,
            Code::Denied => StatusCode::FORBIDDEN,
            Code::Unsupported => StatusCode::METHOD_NOT_ALLOWED,
            Code::TooManyRequests => StatusCode::TOO_MANY_REQUESTS,
            Code::RangeInvalid => StatusCode::RANGE_NOT_SATISFIABLE,
            Code::ManifestTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Code::StorageFull => StatusCode::INSUFFICIENT_STORAGE,
            Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Code::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// An error answered to an OCI client: a code, a human message, and headers some
/// codes need (`Range` on a 416 for an upload, `Retry-After` on a 503).
#[derive(Debug)]
pub struct OciError {
    pub code: Code,
    pub message: String,
    pub headers: Vec<(header::HeaderName, HeaderValue)>,
}

impl OciError {
    pub fn new(code: Code, message: impl Into<String>) -> OciError {
        OciError {
            code,
            message: message.into(),
            headers: Vec::new(),
        }
    }

    pub fn with_header(mut self, name: header::HeaderName, value: HeaderValue) -> OciError {
        self.headers.push((name, value));
        self
    }

    /// An unexpected failure: the detail is logged and the client sees a generic text.
    pub fn internal(detail: &dyn std::fmt::Display) -> OciError {
        tracing::error!(error = %detail, "internal error");
        OciError::new(Code::Internal, "internal error")
    }

    /// A 503; its response says `Retry-After: 1` (as every 503's does).
    pub fn unavailable(message: impl Into<String>) -> OciError {
        OciError::new(Code::Unavailable, message)
    }
}

impl std::fmt::Display for OciError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl IntoResponse for OciError {
    fn into_response(self) -> Response {
        let body = json!({
            "errors": [{ "code": self.code.as_str(), "message": self.message, "detail": null }]
        });
        let mut resp = (self.code.status(), axum::Json(body)).into_response();
        for (name, value) in self.headers {
            resp.headers_mut().insert(name, value);
        }
        // Every 503 tells the client when to come back, whichever path made it.
        if self.code == Code::Unavailable {
            resp.headers_mut()
                .entry(header::RETRY_AFTER)
                .or_insert(HeaderValue::from_static("1"));
        }
        resp
    }
}

impl From<ConsensusError> for OciError {
    fn from(e: ConsensusError) -> OciError {
        match e {
            ConsensusError::ShuttingDown
            | ConsensusError::Unavailable { .. }
            | ConsensusError::NotLeader { .. }
            | ConsensusError::CommitUnknown { .. } => {
                tracing::warn!(error = %e, "metadata unavailable");
                OciError::unavailable("metadata is temporarily unavailable, retry")
            }
            other => OciError::internal(&other),
        }
    }
}

impl From<BlobStoreError> for OciError {
    fn from(e: BlobStoreError) -> OciError {
        match e {
            BlobStoreError::DiskFull { .. } => {
                tracing::warn!(error = %e, "storage full");
                OciError::new(Code::StorageFull, "storage is full")
            }
            BlobStoreError::NotEnoughDisks { .. }
            | BlobStoreError::Peer { .. }
            | BlobStoreError::RemoteShard { .. }
            | BlobStoreError::TooFewShards { .. } => {
                tracing::warn!(error = %e, "storage temporarily unavailable");
                OciError::new(Code::Unavailable, format!("storage unavailable: {e}"))
            }
            other => OciError::internal(&other),
        }
    }
}

/// Shorthand for handler results.
pub type OciResult<T> = Result<T, OciError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn envelope_has_code_message_and_status() {
        let resp = OciError::new(Code::NameInvalid, "bad name").into_response();
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
        let body = axum::body::to_bytes(resp.into_body(), 1 << 16)
            .await
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["errors"][0]["code"], "NAME_INVALID");
        assert_eq!(v["errors"][0]["message"], "bad name");
    }

    #[test]
    fn every_unavailable_answer_says_when_to_retry() {
        let storage = OciError::from(BlobStoreError::TooFewShards {
            stripe: 0,
            needed: 2,
            available: 1,
        });
        for e in [
            storage,
            OciError::new(Code::Unavailable, "x"),
            OciError::unavailable("y"),
        ] {
            let resp = e.into_response();
            assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(resp.headers()[header::RETRY_AFTER], "1");
        }
        let custom = OciError::new(Code::Unavailable, "z")
            .with_header(header::RETRY_AFTER, HeaderValue::from_static("7"))
            .into_response();
        assert_eq!(custom.headers()[header::RETRY_AFTER], "7");
    }

    #[test]
    fn statuses_follow_the_spec() {
        let table = [
            (Code::BlobUnknown, 404),
            (Code::BlobUploadUnknown, 404),
            (Code::ManifestUnknown, 404),
            (Code::NameUnknown, 404),
            (Code::DigestInvalid, 400),
            (Code::ManifestInvalid, 400),
            (Code::ManifestBlobUnknown, 400),
            (Code::NameInvalid, 400),
            (Code::TagInvalid, 400),
            (Code::RangeInvalid, 416),
            (Code::ManifestTooLarge, 413),
            (Code::Unavailable, 503),
            (Code::TooManyRequests, 429),
        ];
        for (code, status) in table {
            assert_eq!(code.status().as_u16(), status, "{code:?}");
        }
    }
}
