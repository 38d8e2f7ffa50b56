//! Fallback conditions: a tiny expression language over one attempt's
//! outcome, compiled once at config load.
//!
//! ```text
//! expr   := or
//! or     := and ("or" and)*
//! and    := unary ("and" unary)*
//! unary  := "not" unary | "(" expr ")" | cmp
//! cmp    := field op value
//! field  := "status" | "latency" | "class"
//! op     := "==" | "!=" | "<" | "<=" | ">" | ">="
//! value  := integer (status) | duration like 30s, 500ms (latency)
//!         | "quoted" class name (class, == and != only)
//! ```
//!
//! `status >= 500 or latency > 30s`, `status == 429`,
//! `class == "connect_refused" or class == "reset"`.

use std::time::Duration;

use super::class::Class;

/// What a condition is evaluated against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// Status the client would have seen (502/504 for transport failures).
    pub status: u16,
    /// Time to the first byte, or until the failure.
    pub latency: Duration,
    /// Failure class.
    pub class: Class,
}

/// A compiled condition.
#[derive(Debug, Clone, PartialEq)]
pub enum Cond {
    /// Both.
    And(Box<Cond>, Box<Cond>),
    /// Either.
    Or(Box<Cond>, Box<Cond>),
    /// Negation.
    Not(Box<Cond>),
    /// `status <op> n`.
    Status(Op, u16),
    /// `latency <op> d`.
    Latency(Op, Duration),
    /// `class == c` (or `!=` with `Not`).
    Class(Class),
}

/// Comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `==`
    Eq,
    /// `!=`
    Ne,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
}

impl Op {
    fn test<T: PartialOrd>(self, a: T, b: T) -> bool {
        match self {
            Op::Eq => a == b,
            Op::Ne => a != b,
            Op::Lt => a < b,
            Op::Le => a <= b,
            Op::Gt => a > b,
            Op::Ge => a >= b,
        }
    }
}

impl Cond {
    /// Evaluates against an outcome.
    pub fn eval(&self, o: &Outcome) -> bool {
        match self {
            Cond::And(a, b) => a.eval(o) && b.eval(o),
            Cond::Or(a, b) => a.eval(o) || b.eval(o),
            Cond::Not(a) => !a.eval(o),
            Cond::Status(op, n) => op.test(o.status, *n),
            Cond::Latency(op, d) => op.test(o.latency, *d),
            Cond::Class(c) => o.class == *c,
        }
    }

    /// The smallest latency `X` in a positive `latency > X` / `>= X` term:
    /// waiting longer than that for a first byte can only end in this
    /// fallback, so the attempt is cut at `X`.
    pub fn latency_trigger(&self) -> Option<std::time::Duration> {
        match self {
            Cond::Latency(Op::Gt | Op::Ge, d) => Some(*d),
            Cond::Or(a, b) => match (a.latency_trigger(), b.latency_trigger()) {
                (Some(x), Some(y)) => Some(x.min(y)),
                (x, y) => x.or(y),
            },
            // Under `and`/`not` a latency alone does not decide.
            Cond::And(..)
            | Cond::Not(_)
            | Cond::Latency(..)
            | Cond::Status(..)
            | Cond::Class(_) => None,
        }
    }

    /// Parses a condition; the error says what was expected where.
    pub fn parse(src: &str) -> Result<Cond, String> {
        let tokens = lex(src)?;
        let mut p = Parser { t: &tokens, i: 0 };
        let c = p.or()?;
        if p.i != tokens.len() {
            return Err(format!(
                "unexpected `{}` after a complete condition",
                tokens[p.i]
            ));
        }
        Ok(c)
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Word(String),
    Str(String),
    Op(Op),
    Open,
    Close,
}

impl std::fmt::Display for Tok {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Tok::Word(w) => f.write_str(w),
            Tok::Str(s) => write!(f, "\"{s}\""),
            Tok::Op(o) => write!(f, "{o:?}"),
            Tok::Open => f.write_str("("),
            Tok::Close => f.write_str(")"),
        }
    }
}

fn lex(src: &str) -> Result<Vec<Tok>, String> {
    let mut out = Vec::new();
    let b = src.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        match c {
            b' ' | b'\t' | b'\n' => i += 1,
            b'(' => {
                out.push(Tok::Open);
                i += 1;
            }
            b')' => {
                out.push(Tok::Close);
                i += 1;
            }
            b'"' => {
                let end = src[i + 1..]
                    .find('"')
                    .ok_or_else(|| "unterminated string".to_string())?;
                out.push(Tok::Str(src[i + 1..i + 1 + end].to_string()));
                i += end + 2;
            }
            b'=' | b'!' | b'<' | b'>' => {
                let two = b.get(i + 1) == Some(&b'=');
                let op = match (c, two) {
                    (b'=', true) => Op::Eq,
                    (b'!', true) => Op::Ne,
                    (b'<', true) => Op::Le,
                    (b'>', true) => Op::Ge,
                    (b'<', false) => Op::Lt,
                    (b'>', false) => Op::Gt,
                    _ => return Err(format!("unknown operator at `{}`", &src[i..])),
                };
                out.push(Tok::Op(op));
                i += if two { 2 } else { 1 };
            }
            _ if c.is_ascii_alphanumeric() || c == b'_' => {
                let start = i;
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                    i += 1;
                }
                out.push(Tok::Word(src[start..i].to_string()));
            }
            _ => return Err(format!("unexpected character `{}`", c as char)),
        }
    }
    Ok(out)
}

struct Parser<'a> {
    t: &'a [Tok],
    i: usize,
}

impl Parser<'_> {
    fn word(&self, w: &str) -> bool {
        matches!(self.t.get(self.i), Some(Tok::Word(x)) if x == w)
    }

    fn or(&mut self) -> Result<Cond, String> {
        let mut left = self.and()?;
        while self.word("or") {
            self.i += 1;
            left = Cond::Or(Box::new(left), Box::new(self.and()?));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Cond, String> {
        let mut left = self.unary()?;
        while self.word("and") {
            self.i += 1;
            left = Cond::And(Box::new(left), Box::new(self.unary()?));
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<Cond, String> {
        if self.word("not") {
            self.i += 1;
            return Ok(Cond::Not(Box::new(self.unary()?)));
        }
        if self.t.get(self.i) == Some(&Tok::Open) {
            self.i += 1;
            let c = self.or()?;
            if self.t.get(self.i) != Some(&Tok::Close) {
                return Err("missing `)`".into());
            }
            self.i += 1;
            return Ok(c);
        }
        self.cmp()
    }

    fn cmp(&mut self) -> Result<Cond, String> {
        let field = match self.t.get(self.i) {
            Some(Tok::Word(w)) => w.clone(),
            Some(t) => return Err(format!("expected status, latency or class, found `{t}`")),
            None => return Err("expected status, latency or class, found the end".into()),
        };
        let Some(Tok::Op(op)) = self.t.get(self.i + 1).cloned() else {
            return Err(format!("expected a comparison after `{field}`"));
        };
        let value = self
            .t
            .get(self.i + 2)
            .cloned()
            .ok_or_else(|| format!("expected a value after `{field}`"))?;
        self.i += 3;
        match (field.as_str(), value) {
            ("status", Tok::Word(v)) => v
                .parse::<u16>()
                .map(|n| Cond::Status(op, n))
                .map_err(|_| format!("status must be compared with a number, not `{v}`")),
            ("latency", Tok::Word(v)) => crate::config::duration::parse(&v)
                .map(|d| Cond::Latency(op, d))
                .map_err(|e| format!("latency: {e}")),
            ("class", Tok::Str(v)) => {
                let c = Class::from_name(&v).ok_or_else(|| {
                    format!(
                        "unknown class \"{v}\"; classes: {}",
                        Class::NAMES.join(", ")
                    )
                })?;
                match op {
                    Op::Eq => Ok(Cond::Class(c)),
                    Op::Ne => Ok(Cond::Not(Box::new(Cond::Class(c)))),
                    _ => Err("class can only be compared with == or !=".into()),
                }
            }
            (f @ ("status" | "latency" | "class"), v) => {
                Err(format!("`{f}` cannot be compared with `{v}`"))
            }
            (f, _) => Err(format!("unknown field `{f}`; use status, latency or class")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn o(status: u16, ms: u64, class: Class) -> Outcome {
        Outcome {
            status,
            latency: Duration::from_millis(ms),
            class,
        }
    }

    #[test]
    fn article_conditions() {
        let a = Cond::parse("status >= 500 or latency > 30s").unwrap();
        assert!(a.eval(&o(503, 10, Class::Status5xx)));
        assert!(a.eval(&o(200, 31_000, Class::FirstByteTimeout)));
        assert!(!a.eval(&o(429, 10, Class::RateLimited)));
        let b = Cond::parse("status == 429").unwrap();
        assert!(b.eval(&o(429, 10, Class::RateLimited)));
        assert!(!b.eval(&o(503, 10, Class::Status5xx)));
    }

    #[test]
    fn latency_triggers() {
        let t = |s: &str| Cond::parse(s).unwrap().latency_trigger();
        assert_eq!(
            t("status >= 500 or latency > 30s"),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            t("latency > 2s or latency >= 500ms"),
            Some(Duration::from_millis(500))
        );
        assert_eq!(t("status == 429"), None);
        assert_eq!(t("latency > 1s and status == 200"), None);
    }

    #[test]
    fn classes_not_and_parens() {
        let c = Cond::parse(
            r#"not (class == "connect_refused" or class != "reset") and status >= 500"#,
        )
        .unwrap();
        assert!(c.eval(&o(502, 1, Class::Reset)));
        assert!(!c.eval(&o(502, 1, Class::ConnectRefused)));
        assert!(!c.eval(&o(502, 1, Class::Status5xx)));
        assert!(!c.eval(&o(429, 1, Class::Reset)));
        let c = Cond::parse(r#"class == "connect_refused""#).unwrap();
        assert!(c.eval(&o(502, 1, Class::ConnectRefused)));
        assert!(!c.eval(&o(502, 1, Class::ConnectTimeout)));
    }

    #[test]
    fn errors_say_what_is_wrong() {
        for (src, needle) in [
            ("status >= ", "expected a value"),
            ("speed > 3", "unknown field `speed`"),
            ("status > fast", "number"),
            ("latency > 30", "no unit"),
            (r#"class == "nope""#, "unknown class"),
            (r#"class > "reset""#, "== or !="),
            ("status == 500 500", "unexpected"),
            ("(status == 500", "missing `)`"),
        ] {
            let e = Cond::parse(src).unwrap_err();
            assert!(e.contains(needle), "{src}: {e}");
        }
    }
}
