//! Lenient borrowed views of OpenAI request bodies: only the fields that
//! hold counted text, borrowed from the body where JSON escapes allow.
//!
//! Every view accepts any JSON value in any position: a field of an
//! unexpected type is skipped (not counted) instead of failing the whole
//! parse, so a request the provider accepts is never left uncounted
//! because of one odd field. The views are deserialized with
//! `deserialize_any`, from the body bytes (serde_json's slice reader) or
//! from a parsed `serde_json::Value` (the mock), with the same code.
//!
//! Building blocks: [`Str`] (a string, else nothing), [`Scalar`] (a
//! string, number or bool as text), [`List`] (an array, else `None`),
//! [`Obj`] (an object read field by field through [`Fields`], else `None`).

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// Implements the `visit_*` methods of a lenient visitor that maps every
/// scalar to `$none`, drains arrays and objects, and keeps the given ones.
macro_rules! ignore_rest {
    ($none:expr; $($skip:ident)*) => {
        $(ignore_rest!(@ $skip $none);)*
    };
    (@ bool $none:expr) => {
        fn visit_bool<E: ::serde::de::Error>(self, _: bool) -> Result<Self::Value, E> { Ok($none) }
    };
    (@ num $none:expr) => {
        fn visit_i64<E: ::serde::de::Error>(self, _: i64) -> Result<Self::Value, E> { Ok($none) }
        fn visit_u64<E: ::serde::de::Error>(self, _: u64) -> Result<Self::Value, E> { Ok($none) }
        fn visit_f64<E: ::serde::de::Error>(self, _: f64) -> Result<Self::Value, E> { Ok($none) }
    };
    (@ unit $none:expr) => {
        fn visit_unit<E: ::serde::de::Error>(self) -> Result<Self::Value, E> { Ok($none) }
        fn visit_none<E: ::serde::de::Error>(self) -> Result<Self::Value, E> { Ok($none) }
    };
    (@ str $none:expr) => {
        fn visit_str<E: ::serde::de::Error>(self, _: &str) -> Result<Self::Value, E> { Ok($none) }
    };
    (@ seq $none:expr) => {
        fn visit_seq<A: ::serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            while seq.next_element::<::serde::de::IgnoredAny>()?.is_some() {}
            Ok($none)
        }
    };
    (@ map $none:expr) => {
        fn visit_map<A: ::serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            while map.next_entry::<::serde::de::IgnoredAny, ::serde::de::IgnoredAny>()?.is_some() {}
            Ok($none)
        }
    };
}

pub(super) use ignore_rest;

/// A JSON string, borrowed when it has no escapes; any other value is
/// `None`.
#[derive(Debug, Default)]
pub(super) struct Str<'a>(pub Option<Cow<'a, str>>);

impl<'de> Deserialize<'de> for Str<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Str<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any value")
            }
            fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Str<'de>, E> {
                Ok(Str(Some(Cow::Borrowed(s))))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Str<'de>, E> {
                Ok(Str(Some(Cow::Owned(s.to_owned()))))
            }
            fn visit_string<E: de::Error>(self, s: String) -> Result<Str<'de>, E> {
                Ok(Str(Some(Cow::Owned(s))))
            }
            ignore_rest!(Str(None); bool num unit seq map);
        }
        d.deserialize_any(V)
    }
}

/// A string, or a number or bool as its JSON text (enum values); `None`
/// for anything else.
#[derive(Debug, Default)]
pub(super) struct Scalar<'a>(pub Option<Cow<'a, str>>);

impl<'de> Deserialize<'de> for Scalar<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Scalar<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any value")
            }
            fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Scalar<'de>, E> {
                Ok(Scalar(Some(Cow::Borrowed(s))))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Scalar<'de>, E> {
                Ok(Scalar(Some(Cow::Owned(s.to_owned()))))
            }
            fn visit_string<E: de::Error>(self, s: String) -> Result<Scalar<'de>, E> {
                Ok(Scalar(Some(Cow::Owned(s))))
            }
            fn visit_bool<E: de::Error>(self, b: bool) -> Result<Scalar<'de>, E> {
                Ok(Scalar(Some(Cow::Borrowed(if b {
                    "true"
                } else {
                    "false"
                }))))
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<Scalar<'de>, E> {
                Ok(Scalar(Some(Cow::Owned(n.to_string()))))
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<Scalar<'de>, E> {
                Ok(Scalar(Some(Cow::Owned(n.to_string()))))
            }
            fn visit_f64<E: de::Error>(self, n: f64) -> Result<Scalar<'de>, E> {
                Ok(Scalar(Some(Cow::Owned(n.to_string()))))
            }
            ignore_rest!(Scalar(None); unit seq map);
        }
        d.deserialize_any(V)
    }
}

/// A JSON array of `T`; `None` for any other value.
#[derive(Debug)]
pub(super) struct List<T>(pub Option<Vec<T>>);

impl<T> Default for List<T> {
    fn default() -> Self {
        List(None)
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for List<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = List<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any value")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<List<T>, A::Error> {
                let mut v = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
                while let Some(x) = seq.next_element()? {
                    v.push(x);
                }
                Ok(List(Some(v)))
            }
            ignore_rest!(List(None); bool num unit str map);
        }
        d.deserialize_any(V(PhantomData))
    }
}

/// A view filled from a JSON object's fields.
pub(super) trait Fields<'de>: Default {
    /// Reads the value of field `key` (which must be consumed, e.g. with
    /// `map.next_value::<IgnoredAny>()` when not wanted).
    fn field<A: MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<(), A::Error>;
}

/// A JSON object read into `T`; `None` for any other value.
#[derive(Debug)]
pub(super) struct Obj<T>(pub Option<T>);

impl<T> Default for Obj<T> {
    fn default() -> Self {
        Obj(None)
    }
}

impl<'de, T: Fields<'de>> Deserialize<'de> for Obj<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<'de, T: Fields<'de>> Visitor<'de> for V<T> {
            type Value = Obj<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any value")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Obj<T>, A::Error> {
                let mut t = T::default();
                while let Some(Key(k)) = map.next_key()? {
                    t.field(&k, &mut map)?;
                }
                Ok(Obj(Some(t)))
            }
            ignore_rest!(Obj(None); bool num unit str seq);
        }
        d.deserialize_any(V(PhantomData))
    }
}

/// An object's fields in order, as (key, value) pairs (JSON schema
/// `properties`); `None` for any other value.
#[derive(Debug)]
pub(super) struct Entries<'a, T>(pub Option<Vec<(Cow<'a, str>, T)>>);

impl<T> Default for Entries<'_, T> {
    fn default() -> Self {
        Entries(None)
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Entries<'de, T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = Entries<'de, T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any value")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut v = Vec::new();
                while let Some((Key(k), t)) = map.next_entry()? {
                    v.push((k, t));
                }
                Ok(Entries(Some(v)))
            }
            ignore_rest!(Entries(None); bool num unit str seq);
        }
        d.deserialize_any(V(PhantomData))
    }
}

/// An object key, borrowed when it has no escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string key")
            }
            fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(s)))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(s.to_owned())))
            }
            fn visit_string<E: de::Error>(self, s: String) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(s)))
            }
        }
        d.deserialize_str(V)
    }
}

/// Skips a field's value.
/// An object read only for its `function` member: `tools[]` items (a
/// definition) and `tool_calls[]` items (a call).
#[derive(Debug)]
pub(super) struct WithFunction<T> {
    pub(super) function: Obj<T>,
}

impl<T> Default for WithFunction<T> {
    fn default() -> Self {
        WithFunction {
            function: Obj(None),
        }
    }
}

impl<'de, T: Fields<'de>> Fields<'de> for WithFunction<T> {
    fn field<A: MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<(), A::Error> {
        match key {
            "function" => self.function = map.next_value()?,
            _ => skip(map)?,
        }
        Ok(())
    }
}

pub(super) fn skip<'de, A: MapAccess<'de>>(map: &mut A) -> Result<(), A::Error> {
    map.next_value::<IgnoredAny>().map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default, Debug)]
    struct Pair<'a> {
        a: Str<'a>,
        b: List<Scalar<'a>>,
    }

    impl<'de> Fields<'de> for Pair<'de> {
        fn field<A: MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<(), A::Error> {
            match key {
                "a" => self.a = map.next_value()?,
                "b" => self.b = map.next_value()?,
                _ => skip(map)?,
            }
            Ok(())
        }
    }

    #[test]
    fn odd_shapes_are_skipped_not_errors() {
        let body = br#"{"a": 5, "b": "x", "c": {"d": [1, {"e": null}]}}"#;
        let v: Obj<Pair<'_>> = serde_json::from_slice(body).unwrap();
        let p = v.0.unwrap();
        assert!(p.a.0.is_none());
        assert!(p.b.0.is_none());

        let body = br#"{"a": "hi\n", "b": ["s", 1, 2.5, true, null, [1]], "a2": []}"#;
        let p = serde_json::from_slice::<Obj<Pair<'_>>>(body)
            .unwrap()
            .0
            .unwrap();
        assert_eq!(p.a.0.as_deref(), Some("hi\n"));
        let b: Vec<Option<String>> =
            p.b.0
                .unwrap()
                .into_iter()
                .map(|s| s.0.map(Cow::into_owned))
                .collect();
        let want = [Some("s"), Some("1"), Some("2.5"), Some("true"), None, None];
        assert_eq!(b, want.map(|s| s.map(str::to_owned)));

        let v: Obj<Pair<'_>> = serde_json::from_slice(b"[1, 2]").unwrap();
        assert!(v.0.is_none());
    }

    #[test]
    fn borrows_unescaped_strings() {
        let body = br#"{"a": "plain"}"#;
        let p = serde_json::from_slice::<Obj<Pair<'_>>>(body)
            .unwrap()
            .0
            .unwrap();
        assert!(matches!(p.a.0, Some(Cow::Borrowed("plain"))));
        let value = serde_json::json!({"a": "from value"});
        let p = Obj::<Pair<'_>>::deserialize(&value).unwrap().0.unwrap();
        assert!(matches!(p.a.0, Some(Cow::Borrowed("from value"))));
    }
}
