//! Structure-aware inputs: random values of any `Deserialize` type, built by driving the
//! type's own `Deserialize` impl with a deserializer that makes its answers up.
//!
//! A derived impl asks for a struct's fields in order, an enum's variant by index, a
//! sequence's elements one by one: the same questions bincode answers from bytes, which is
//! why every wire type of the protocol can be generated without a line of code per type, and
//! why a new message type (a credential, a manifest) gets a generator for free. Encoding the
//! value gives an input that is valid down to the last byte, which the mutators then break
//! in small ways.

use std::fmt;

use serde::de::{
    self, DeserializeOwned, DeserializeSeed, EnumAccess, IntoDeserializer, MapAccess, SeqAccess,
    VariantAccess, Visitor,
};

use crate::rng::Rng;

/// Nesting beyond which options are `None` and collections empty.
const SOFT_DEPTH: usize = 6;
/// Nesting at which generation gives up (a type that recurses without an exit).
const HARD_DEPTH: usize = 64;
/// Longest collection, string or byte buffer generated.
const MAX_LEN: usize = 4096;
/// Elements (of collections, strings, byte buffers) in one value at most, so nested
/// collections stay small enough to make thousands of values a second.
const BUDGET: usize = 8192;

/// A random value of `T`, or `None` if the type's impl refused every answer given (a
/// validating `Deserialize`, or a type that recurses too deep).
pub fn arbitrary<T: DeserializeOwned>(rng: &mut Rng) -> Option<T> {
    let mut gen = Gen {
        rng,
        depth: 0,
        budget: BUDGET,
    };
    T::deserialize(&mut gen).ok()
}

/// Why a value could not be generated.
#[derive(Debug)]
pub struct GenError(String);

impl fmt::Display for GenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for GenError {}

impl de::Error for GenError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Self(msg.to_string())
    }
}

struct Gen<'r> {
    rng: &'r mut Rng,
    depth: usize,
    /// Elements left to generate.
    budget: usize,
}

impl Gen<'_> {
    fn enter(&mut self) -> Result<(), GenError> {
        self.depth += 1;
        if self.depth > HARD_DEPTH {
            return Err(GenError("too deep".into()));
        }
        Ok(())
    }

    fn len(&mut self) -> usize {
        if self.depth >= SOFT_DEPTH {
            return 0;
        }
        let n = self.rng.len(MAX_LEN).min(self.budget);
        self.budget -= n;
        n
    }

    fn string(&mut self) -> String {
        let n = self.len().min(512);
        match self.rng.below(4) {
            0 => String::new(),
            1 => (0..n)
                .map(|_| (b'a' + self.rng.below(26) as u8) as char)
                .collect(),
            2 => (0..n)
                .map(|_| *self.rng.pick(&['a', 'é', '∑', '🐟', '\0', '/', ' ']))
                .collect(),
            _ => (0..n)
                .filter_map(|_| char::from_u32(self.rng.below(0x11_0000) as u32))
                .collect(),
        }
    }

    fn bytes(&mut self) -> Vec<u8> {
        let n = self.len();
        self.rng.bytes(n)
    }
}

macro_rules! ints {
    ($($method:ident $visit:ident $ty:ty),* $(,)?) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, GenError> {
            visitor.$visit(self.rng.interesting_u64() as $ty)
        }
    )*};
}

impl<'de> de::Deserializer<'de> for &mut Gen<'_> {
    type Error = GenError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, GenError> {
        // Only self-describing formats call this; bincode does not. Any answer will do.
        visitor.visit_u64(self.rng.interesting_u64())
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, GenError> {
        visitor.visit_bool(self.rng.chance(1, 2))
    }

    ints! {
        deserialize_i8 visit_i8 i8,
        deserialize_i16 visit_i16 i16,
        deserialize_i32 visit_i32 i32,
        deserialize_i64 visit_i64 i64,
        deserialize_i128 visit_i128 i128,
        deserialize_u8 visit_u8 u8,
        deserialize_u16 visit_u16 u16,
        deserialize_u32 visit_u32 u32,
        deserialize_u64 visit_u64 u64,
        deserialize_u128 visit_u128 u128,
    }

    fn deserialize_f32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, GenError> {
        visitor.visit_f32(*self.rng.pick(&[0.0, -1.5, 1e30, f32::MAX, f32::INFINITY]))
    }

    fn deserialize_f64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, GenError> {
        let pick = *self.rng.pick(&[0.0, 0.5, -2.25, 1e300, f64::MIN_POSITIVE]);
        visitor.visit_f64(pick)
    }

    fn deserialize_char<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, GenError> {
        let c = char::from_u32(self.rng.below(0x11_0000) as u32).unwrap_or('x');
        visitor.visit_char(c)
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, GenError> {
        visitor.visit_string(self.string())
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, GenError> {
        visitor.visit_string(self.string())
    }

    fn deserialize_bytes<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, GenError> {
        visitor.visit_byte_buf(self.bytes())
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, GenError> {
        visitor.visit_byte_buf(self.bytes())
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, GenError> {
        if self.depth >= SOFT_DEPTH || self.rng.chance(1, 3) {
            return visitor.visit_none();
        }
        self.enter()?;
        let value = visitor.visit_some(&mut *self);
        self.depth -= 1;
        value
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, GenError> {
        visitor.visit_unit()
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, GenError> {
        visitor.visit_unit()
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, GenError> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, GenError> {
        let left = self.len();
        self.fixed(left, visitor)
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, GenError> {
        self.fixed(len, visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, GenError> {
        self.fixed(len, visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, GenError> {
        self.enter()?;
        let left = self.len().min(64);
        let value = visitor.visit_map(Elements { gen: self, left });
        self.depth -= 1;
        value
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, GenError> {
        self.fixed(fields.len(), visitor)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, GenError> {
        self.enter()?;
        let value = visitor.visit_enum(Variant {
            index: self.rng.below(variants.len()) as u32,
            gen: &mut *self,
        });
        self.depth -= 1;
        value
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, GenError> {
        visitor.visit_u32(0)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, GenError> {
        visitor.visit_unit()
    }

    fn is_human_readable(&self) -> bool {
        // As bincode: types with two forms pick their compact one.
        false
    }
}

impl Gen<'_> {
    /// Visits a sequence of exactly `left` elements (a tuple, a struct's fields, or a
    /// sequence whose length was drawn).
    fn fixed<'de, V: Visitor<'de>>(
        &mut self,
        left: usize,
        visitor: V,
    ) -> Result<V::Value, GenError> {
        self.enter()?;
        let value = visitor.visit_seq(Elements { gen: self, left });
        self.depth -= 1;
        value
    }
}

struct Elements<'g, 'r> {
    gen: &'g mut Gen<'r>,
    left: usize,
}

impl<'de> SeqAccess<'de> for Elements<'_, '_> {
    type Error = GenError;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, GenError> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        seed.deserialize(&mut *self.gen).map(Some)
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.left)
    }
}

impl<'de> MapAccess<'de> for Elements<'_, '_> {
    type Error = GenError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, GenError> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        seed.deserialize(&mut *self.gen).map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, GenError> {
        seed.deserialize(&mut *self.gen)
    }
}

struct Variant<'g, 'r> {
    gen: &'g mut Gen<'r>,
    index: u32,
}

impl<'de, 'g, 'r> EnumAccess<'de> for Variant<'g, 'r> {
    type Error = GenError;
    type Variant = Self;

    fn variant_seed<V: DeserializeSeed<'de>>(self, seed: V) -> Result<(V::Value, Self), GenError> {
        let index: de::value::U32Deserializer<GenError> = self.index.into_deserializer();
        Ok((seed.deserialize(index)?, self))
    }
}

impl<'de> VariantAccess<'de> for Variant<'_, '_> {
    type Error = GenError;

    fn unit_variant(self) -> Result<(), GenError> {
        Ok(())
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, GenError> {
        seed.deserialize(&mut *self.gen)
    }

    fn tuple_variant<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, GenError> {
        self.gen.fixed(len, visitor)
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, GenError> {
        self.gen.fixed(fields.len(), visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_protocol::mesh::PeerMsg;
    use shoal_protocol::{codec, ToClient, ToNode};

    fn variant_name<T: fmt::Debug>(v: &T) -> String {
        let s = format!("{v:?}");
        s.split(['(', ' ', '{'])
            .next()
            .unwrap_or_default()
            .to_string()
    }

    #[test]
    fn generated_messages_round_trip_and_cover_the_variants() {
        let mut rng = Rng::new(42);
        let mut names = std::collections::BTreeSet::new();
        for _ in 0..2000 {
            let msg: ToNode = arbitrary(&mut rng).expect("ToNode generates");
            let bytes = codec::encode(&msg).unwrap();
            let back: ToNode = codec::decode(&bytes, usize::MAX).unwrap();
            assert_eq!(back, msg);
            names.insert(variant_name(&msg));
        }
        // Every variant of ToNode (19 today) shows up in 2000 draws.
        assert!(names.len() >= 19, "only {names:?}");
        let mut refused = 0;
        for _ in 0..500 {
            let msg: PeerMsg = arbitrary(&mut rng).expect("PeerMsg generates");
            let back: PeerMsg = codec::decode(&codec::encode(&msg).unwrap(), usize::MAX).unwrap();
            assert_eq!(back, msg);
            // A draw a type refuses (a zero for a `NonZeroU32`, say) generates nothing; such
            // draws are rare.
            let Some(msg): Option<ToClient> = arbitrary(&mut rng) else {
                refused += 1;
                continue;
            };
            let back: ToClient = codec::decode(&codec::encode(&msg).unwrap(), usize::MAX).unwrap();
            assert_eq!(back, msg);
        }
        assert!(refused < 25, "{refused} of 500 ToClient draws refused");
    }
}
