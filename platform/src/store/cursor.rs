use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use super::StoreError;

/// Where a page ended: the last item's keys (and index keys for index queries). Encoded as
/// an opaque page token; both backends read and write the same form.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Cursor {
    pub pk: String,
    pub sk: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipk: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub isk: Option<String>,
}

impl Cursor {
    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(self).unwrap_or_default())
    }

    pub fn decode(token: &str) -> Result<Self, StoreError> {
        let bytes = URL_SAFE_NO_PAD
            .decode(token)
            .map_err(|_| StoreError::InvalidCursor)?;
        serde_json::from_slice(&bytes).map_err(|_| StoreError::InvalidCursor)
    }

    /// An empty page token means the first page.
    pub fn from_page_token(token: &str) -> Result<Option<Self>, StoreError> {
        if token.is_empty() {
            Ok(None)
        } else {
            Self::decode(token).map(Some)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_garbage() {
        let c = Cursor {
            pk: "u#1".into(),
            sk: "o#2".into(),
            ipk: Some("x".into()),
            isk: None,
        };
        assert_eq!(Cursor::decode(&c.encode()).unwrap(), c);
        assert!(matches!(
            Cursor::decode("%%%"),
            Err(StoreError::InvalidCursor)
        ));
        assert!(matches!(
            Cursor::decode("bm90anNvbg"),
            Err(StoreError::InvalidCursor)
        ));
        assert_eq!(Cursor::from_page_token("").unwrap(), None);
    }
}
