//! Model-name globs: `*` matches any run of characters, `?` exactly one.
//!
//! Patterns are split at compile time into a literal prefix (checked first,
//! which rejects almost every non-match in a few bytes) and the rest.

/// A compiled glob.
#[derive(Debug, Clone)]
pub struct Glob {
    pattern: Box<str>,
    /// Literal characters before the first wildcard.
    prefix_len: usize,
    /// Count of literal (non-wildcard) characters: the specificity.
    literals: usize,
}

impl Glob {
    /// Compiles a pattern that contains at least one wildcard.
    pub fn new(pattern: &str) -> Self {
        let prefix_len = pattern.find(['*', '?']).unwrap_or(pattern.len());
        let literals = pattern.chars().filter(|&c| c != '*' && c != '?').count();
        Glob {
            pattern: pattern.into(),
            prefix_len,
            literals,
        }
    }

    /// True when `s` contains a wildcard character.
    pub fn is_glob(s: &str) -> bool {
        s.contains(['*', '?'])
    }

    /// The pattern as written.
    pub fn pattern(&self) -> &str {
        &self.pattern
    }

    /// Literal characters: more means more specific.
    pub fn literals(&self) -> usize {
        self.literals
    }

    /// Whether `s` matches the whole pattern.
    #[inline]
    pub fn matches(&self, s: &str) -> bool {
        let p = self.pattern.as_bytes();
        let t = s.as_bytes();
        if t.len() < self.prefix_len || p[..self.prefix_len] != t[..self.prefix_len] {
            return false;
        }
        wildcard(&self.pattern[self.prefix_len..], &s[self.prefix_len..])
    }
}

/// Matches bytes when both sides are ASCII (the usual model name), chars
/// otherwise so `?` is one character.
fn wildcard(p: &str, t: &str) -> bool {
    if p.is_ascii() && t.is_ascii() {
        wildcard_slice(p.as_bytes(), t.as_bytes(), b'*', b'?')
    } else {
        let p: Vec<char> = p.chars().collect();
        let t: Vec<char> = t.chars().collect();
        wildcard_slice(&p, &t, '*', '?')
    }
}

/// Iterative wildcard match with single-star backtracking: linear in the
/// common cases, O(n*m) worst case, no recursion.
fn wildcard_slice<T: PartialEq + Copy>(p: &[T], t: &[T], star_c: T, any: T) -> bool {
    let (mut pi, mut ti) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        match p.get(pi) {
            Some(&c) if c == star_c => {
                star = Some((pi, ti));
                pi += 1;
            }
            Some(&c) if c == any || c == t[ti] => {
                pi += 1;
                ti += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    pi = sp + 1;
                    ti = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|&c| c == star_c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matching() {
        let g = Glob::new("gpt-4o*");
        assert!(g.matches("gpt-4o"));
        assert!(g.matches("gpt-4o-mini"));
        assert!(!g.matches("gpt-4"));
        assert!(!g.matches("xgpt-4o"));
        let g = Glob::new("*llama*70b");
        assert!(g.matches("meta-llama-3-70b"));
        assert!(g.matches("llama70b"));
        assert!(!g.matches("llama-70b-instruct"));
        let g = Glob::new("claude-?-opus");
        assert!(g.matches("claude-3-opus"));
        assert!(!g.matches("claude-35-opus"));
        assert!(Glob::new("*").matches(""));
        assert!(Glob::new("a*b*c").matches("aXXbYYbc"));
        assert!(Glob::new("é*").matches("éa"));
        assert_eq!(Glob::new("gpt-4o*").literals(), 6);
    }
}
