//! [`Json<T>`]: a value of a type that the binary encoding cannot read back, sent as JSON.

use std::fmt;
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};

use serde::de::{self, DeserializeOwned, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// A value that travels as JSON inside Shoal's binary encoding: for types that need a
/// self-describing format, which the binary encoding can write but not read back
/// (`serde_json::Value`, `#[serde(untagged)]` and `#[serde(flatten)]` types, fields skipped
/// with `skip_serializing_if`). Such a type passed bare to a task, or returned by one, fails
/// at once with an error that points here. Refs inside it are tracked as in any value.
///
/// ```no_run
/// use shoal::Json;
///
/// #[shoal::remote]
/// fn key_names(doc: Json<serde_json::Value>) -> Json<serde_json::Value> {
///     let keys: Vec<String> = doc.as_object().map(|o| o.keys().cloned().collect()).unwrap_or_default();
///     Json(serde_json::json!(keys))
/// }
///
/// # fn main() -> Result<(), shoal::GetError> {
/// let doc = serde_json::json!({"a": 1, "b": [true, null]});
/// let Json(keys) = key_names.remote(Json(doc)).get_blocking()?;
/// assert_eq!(keys, serde_json::json!(["a", "b"]));
/// # Ok(()) }
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Json<T>(pub T);

impl<T> Json<T> {
    /// The value.
    ///
    /// ```no_run
    /// use shoal::Json;
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let config = shoal::put(&Json(serde_json::json!({"retries": 3})))?;
    /// let value: serde_json::Value = config.get_blocking()?.into_inner();
    /// assert_eq!(value["retries"], 3);
    /// # Ok(()) }
    /// ```
    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T> From<T> for Json<T> {
    fn from(value: T) -> Self {
        Json(value)
    }
}

impl<T> Deref for Json<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T> DerefMut for Json<T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.0
    }
}

impl<T: Serialize> Serialize for Json<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let text = serde_json::to_vec(&self.0).map_err(serde::ser::Error::custom)?;
        s.serialize_bytes(&text)
    }
}

impl<'de, T: DeserializeOwned> Deserialize<'de> for Json<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Text<T>(PhantomData<fn() -> T>);

        impl<'de, T: DeserializeOwned> Visitor<'de> for Text<T> {
            type Value = Json<T>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("the bytes of a JSON text")
            }

            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Json<T>, E> {
                serde_json::from_slice(v).map(Json).map_err(E::custom)
            }

            fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Json<T>, E> {
                self.visit_bytes(&v)
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Json<T>, A::Error> {
                let mut bytes = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 20));
                while let Some(b) = seq.next_element::<u8>()? {
                    bytes.push(b);
                }
                self.visit_bytes(&bytes)
            }
        }

        d.deserialize_byte_buf(Text(PhantomData))
    }
}
