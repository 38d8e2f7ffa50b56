//! Tool and function definitions (`tools[].function`, legacy `functions`).
//!
//! OpenAI renders definitions into the system prompt in a format it does
//! not publish. The best public account is the cookbook's
//! `num_tokens_for_tools` ("How to count tokens with tiktoken", section 7),
//! checked there against the API for gpt-3.5-turbo, gpt-4 (105 tokens for
//! its weather example) and gpt-4o, gpt-4o-mini (101). Matched exactly:
//!
//! - per function: `func_init` (7 for o200k_base models, 10 for
//!   cl100k_base ones; the cookbook keys it by model, here the encoding
//!   stands for the family) plus the tokens of `"{name}:{description}"`,
//!   one trailing `.` of the description dropped;
//! - when it has `parameters.properties`: `prop_init` (3), and per
//!   property `prop_key` (3) plus `"{key}:{type}:{description}"` (one
//!   trailing `.` dropped);
//! - per property with an `enum`: `enum_init` (-3), then per item
//!   `enum_item` (3) plus the item's tokens;
//! - once per request with any definition: `func_end` (12).
//!
//! Approximate (beyond the cookbook, no public reference figures):
//! - nested object properties (`properties` of a property, or of its
//!   `items`) are counted by the same rules as top-level ones; the cookbook
//!   ignores them, which undercounts nested schemas badly;
//! - a `type` array (`["string", "null"]`) is counted as `string | null`;
//!   numeric and boolean enum items as their JSON text;
//! - a missing description counts as empty;
//! - `required`, `strict`, `additionalProperties`, formats and defaults,
//!   `tool_choice`, `response_format` schemas and non-function tools are
//!   not counted.

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, MapAccess, SeqAccess, Visitor};

use super::parse::{Entries, Fields, List, Obj, Scalar, Str, WithFunction, ignore_rest, skip};
use super::{Counting, Encoding, cache};

/// The cookbook's constants for one model family.
struct Constants {
    func_init: i64,
    prop_init: i64,
    prop_key: i64,
    enum_init: i64,
    enum_item: i64,
    func_end: i64,
}

fn constants(enc: Encoding) -> Constants {
    let func_init = match enc {
        Encoding::O200k => 7,
        Encoding::Cl100k => 10,
    };
    Constants {
        func_init,
        prop_init: 3,
        prop_key: 3,
        enum_init: -3,
        enum_item: 3,
        func_end: 12,
    }
}

/// `tools[]` item.
pub(super) type Tool<'a> = WithFunction<Function<'a>>;

/// A function definition.
#[derive(Debug, Default)]
pub(super) struct Function<'a> {
    name: Str<'a>,
    description: Str<'a>,
    parameters: Obj<Schema<'a>>,
}

impl<'de> Fields<'de> for Function<'de> {
    fn field<A: MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<(), A::Error> {
        match key {
            "name" => self.name = map.next_value()?,
            "description" => self.description = map.next_value()?,
            "parameters" => self.parameters = map.next_value()?,
            _ => skip(map)?,
        }
        Ok(())
    }
}

/// The counted parts of a JSON schema.
#[derive(Debug, Default)]
struct Schema<'a> {
    kind: TypeName<'a>,
    description: Str<'a>,
    enumeration: List<Scalar<'a>>,
    properties: Entries<'a, Obj<Schema<'a>>>,
    items: Option<Box<Schema<'a>>>,
}

impl<'de> Fields<'de> for Schema<'de> {
    fn field<A: MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<(), A::Error> {
        match key {
            "type" => self.kind = map.next_value()?,
            "description" => self.description = map.next_value()?,
            "enum" => self.enumeration = map.next_value()?,
            "properties" => self.properties = map.next_value()?,
            "items" => self.items = map.next_value::<Obj<Schema<'de>>>()?.0.map(Box::new),
            _ => skip(map)?,
        }
        Ok(())
    }
}

/// `type`: a name, or an array of names shown as a union.
#[derive(Debug, Default)]
struct TypeName<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for TypeName<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = TypeName<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any value")
            }
            fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Self::Value, E> {
                Ok(TypeName(Cow::Borrowed(s)))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
                Ok(TypeName(Cow::Owned(s.to_owned())))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut names = Vec::new();
                while let Some(Str(s)) = seq.next_element()? {
                    names.extend(s);
                }
                Ok(TypeName(Cow::Owned(names.join(" | "))))
            }
            ignore_rest!(TypeName::default(); bool num unit map);
        }
        d.deserialize_any(V)
    }
}

/// Drops one trailing `.`, as the cookbook does.
fn strip_dot(s: &str) -> &str {
    s.strip_suffix('.').unwrap_or(s)
}

/// Texts to encode and the fixed overhead of a set of definitions.
#[derive(Default)]
struct Plan<'a> {
    texts: Vec<Cow<'a, str>>,
    overhead: i64,
}

impl<'p> Plan<'p> {
    fn function(&mut self, c: &Constants, f: &'p Function<'_>) {
        self.overhead += c.func_init;
        let name = f.name.0.as_deref().unwrap_or("");
        let desc = strip_dot(f.description.0.as_deref().unwrap_or(""));
        self.texts.push(Cow::Owned(format!("{name}:{desc}")));
        if let Some(schema) = &f.parameters.0 {
            self.properties(c, schema);
        }
    }

    /// `schema.properties` (and those of `schema.items`), recursively.
    fn properties(&mut self, c: &Constants, schema: &'p Schema<'_>) {
        if let Some(props) = schema.properties.0.as_ref().filter(|p| !p.is_empty()) {
            self.overhead += c.prop_init;
            for (key, prop) in props {
                self.overhead += c.prop_key;
                let Some(prop) = &prop.0 else { continue };
                if let Some(items) = &prop.enumeration.0 {
                    self.overhead += c.enum_init;
                    for item in items {
                        self.overhead += c.enum_item;
                        if let Some(t) = &item.0 {
                            self.texts.push(Cow::Borrowed(t.as_ref()));
                        }
                    }
                }
                let desc = strip_dot(prop.description.0.as_deref().unwrap_or(""));
                self.texts
                    .push(Cow::Owned(format!("{key}:{}:{desc}", prop.kind.0)));
                self.properties(c, prop);
            }
        }
        if let Some(items) = &schema.items {
            self.properties(c, items);
        }
    }
}

/// Tokens of function definitions (`tools[].function` and `functions`).
pub(super) fn definitions_tokens<'a>(
    enc: Encoding,
    defs: impl Iterator<Item = Function<'a>>,
    how: Counting,
) -> u64 {
    let defs: Vec<Function<'a>> = defs.collect();
    if defs.is_empty() {
        return 0;
    }
    let c = constants(enc);
    let mut plan = Plan::default();
    for f in &defs {
        plan.function(&c, f);
    }
    plan.overhead += c.func_end;
    let text = i64::try_from(cache::texts_tokens(enc, &plan.texts, how)).unwrap_or(i64::MAX);
    u64::try_from(text.saturating_add(plan.overhead)).unwrap_or(0)
}
