//! The condition language of workflow steps and routes (proto/README.md, "Step conditions"):
//! parsing into an AST once at registration and evaluating it against a [`Scope`] per run.
//!
//! This module knows nothing about protobuf; [`super::view`] maps agent outputs and sessions onto
//! [`Operand`]s. Evaluation never fails: a missing path reads as `null`, and any comparison
//! between values of different types is simply false, so a condition over an output that a
//! newer agent shaped differently degrades to "skip" instead of failing the turn.

use std::fmt;

/// Longest accepted condition source, in bytes. Conditions are short guards; the cap keeps a
/// stored workflow definition small and parsing cheap.
pub const MAX_SOURCE_BYTES: usize = 1024;

/// Deepest accepted nesting of `(` and `!`. The parser and the evaluator recurse once per level,
/// so the cap turns a hostile input into an error instead of a stack overflow.
pub const MAX_DEPTH: usize = 32;

/// A dotted path such as `ipa.safety.crisis`, one segment per identifier.
pub type Path = Vec<String>;

/// A value read from the scope at a path.
#[derive(Debug, Clone, PartialEq)]
pub enum Operand {
    /// The path does not exist (or names an unset message).
    Null,
    Bool(bool),
    Number(f64),
    String(String),
    /// A protobuf enum value. `name` is the value's name lowercased without the enum's prefix
    /// (`"critical"` for `SAFETY_LEVEL_CRITICAL`); `values` lists every `(short name, number)` of
    /// the enum so a string literal can be resolved to a number for ordering comparisons.
    Enum {
        name: String,
        number: i32,
        values: Vec<(String, i32)>,
    },
}

impl Operand {
    /// Truthiness of a bare path: null, false, 0, NaN, "" and the zero (unspecified) enum value
    /// are false, everything else is true.
    pub fn is_truthy(&self) -> bool {
        match self {
            Operand::Null => false,
            Operand::Bool(value) => *value,
            Operand::Number(value) => *value != 0.0 && !value.is_nan(),
            Operand::String(value) => !value.is_empty(),
            Operand::Enum { number, .. } => *number != 0,
        }
    }
}

/// Where a condition reads its values from.
pub trait Scope {
    /// The value at `path`, or [`Operand::Null`] when there is none.
    fn lookup(&self, path: &[String]) -> Operand;
}

/// Why a condition does not parse, with the byte offset in the source where it went wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("at offset {offset}: {reason}")]
pub struct ConditionError {
    pub offset: usize,
    pub reason: String,
}

impl ConditionError {
    fn new(offset: usize, reason: impl Into<String>) -> Self {
        Self {
            offset,
            reason: reason.into(),
        }
    }
}

/// A parsed condition: its source text and its syntax tree.
#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    source: String,
    expr: Expr,
}

#[derive(Debug, Clone, PartialEq)]
enum Expr {
    /// True when any operand is (at least two operands).
    Or(Vec<Expr>),
    /// True when every operand is (at least two operands).
    And(Vec<Expr>),
    Not(Box<Expr>),
    /// A bare path: its truthiness.
    Truthy(Path),
    Compare {
        path: Path,
        op: CompareOp,
        literal: Literal,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CompareOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

#[derive(Debug, Clone, PartialEq)]
enum Literal {
    Null,
    Bool(bool),
    Number(f64),
    String(String),
}

impl Condition {
    /// Parses `source`. Empty (or whitespace-only) source is an error here: callers treat an
    /// empty condition as "no condition" before they get this far.
    pub fn parse(source: &str) -> Result<Condition, ConditionError> {
        if source.len() > MAX_SOURCE_BYTES {
            return Err(ConditionError::new(
                MAX_SOURCE_BYTES,
                format!(
                    "condition is {} bytes long, at most {MAX_SOURCE_BYTES} are allowed",
                    source.len()
                ),
            ));
        }
        let tokens = Lexer::new(source).tokenize()?;
        let mut parser = Parser {
            tokens,
            position: 0,
            end: source.len(),
        };
        if parser.peek().is_none() {
            return Err(ConditionError::new(
                source.len(),
                "expected an expression, found the end of the condition",
            ));
        }
        let expr = parser.expr(0)?;
        if let Some(token) = parser.peek() {
            return Err(ConditionError::new(
                token.offset,
                format!("expected `&&`, `||` or the end, found {}", token.kind),
            ));
        }
        Ok(Condition {
            source: source.to_owned(),
            expr,
        })
    }

    /// The text the condition was parsed from.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Every path the condition reads, in source order, for validation at registration.
    pub fn paths(&self) -> Vec<&[String]> {
        let mut paths = Vec::new();
        collect_paths(&self.expr, &mut paths);
        paths
    }

    /// Evaluates the condition against `scope`. Never fails: missing paths and type mismatches
    /// make the comparisons they appear in false.
    pub fn eval(&self, scope: &dyn Scope) -> bool {
        eval(&self.expr, scope)
    }
}

impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

fn collect_paths<'a>(expr: &'a Expr, paths: &mut Vec<&'a [String]>) {
    match expr {
        Expr::Or(items) | Expr::And(items) => {
            for item in items {
                collect_paths(item, paths);
            }
        }
        Expr::Not(inner) => collect_paths(inner, paths),
        Expr::Truthy(path) | Expr::Compare { path, .. } => paths.push(path),
    }
}

fn eval(expr: &Expr, scope: &dyn Scope) -> bool {
    match expr {
        Expr::Or(items) => items.iter().any(|item| eval(item, scope)),
        Expr::And(items) => items.iter().all(|item| eval(item, scope)),
        Expr::Not(inner) => !eval(inner, scope),
        Expr::Truthy(path) => scope.lookup(path).is_truthy(),
        Expr::Compare { path, op, literal } => compare(&scope.lookup(path), *op, literal),
    }
}

/// `value op literal`. Comparing with `null` tests presence (only `==`/`!=` are meaningful);
/// otherwise a null value or a type mismatch is false for every operator, `!=` included.
fn compare(value: &Operand, op: CompareOp, literal: &Literal) -> bool {
    use std::cmp::Ordering;

    let ordering: Option<Ordering> = match (value, literal) {
        (value, Literal::Null) => {
            let is_null = matches!(value, Operand::Null);
            return match op {
                CompareOp::Eq => is_null,
                CompareOp::Ne => !is_null,
                _ => false,
            };
        }
        (Operand::Bool(value), Literal::Bool(literal)) => {
            return match op {
                CompareOp::Eq => value == literal,
                CompareOp::Ne => value != literal,
                _ => false,
            };
        }
        (Operand::Number(value), Literal::Number(literal)) => value.partial_cmp(literal),
        (Operand::String(value), Literal::String(literal)) => Some(value.as_str().cmp(literal)),
        (Operand::Enum { number, values, .. }, Literal::String(literal)) => {
            match values.iter().find(|(name, _)| name == literal) {
                Some((_, literal_number)) => Some(number.cmp(literal_number)),
                // An unknown enum name is most likely a typo or a value this build does not
                // know yet; no comparison with it holds.
                None => return false,
            }
        }
        _ => return false,
    };
    let Some(ordering) = ordering else {
        // NaN: unordered, equal to nothing; `!=` still holds as in IEEE 754.
        return op == CompareOp::Ne;
    };
    match op {
        CompareOp::Eq => ordering == Ordering::Equal,
        CompareOp::Ne => ordering != Ordering::Equal,
        CompareOp::Lt => ordering == Ordering::Less,
        CompareOp::Le => ordering != Ordering::Greater,
        CompareOp::Gt => ordering == Ordering::Greater,
        CompareOp::Ge => ordering != Ordering::Less,
    }
}

// ---------------------------------------------------------------------------------------------
// Lexer
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq)]
enum TokenKind {
    Ident(String),
    Dot,
    Not,
    And,
    Or,
    LParen,
    RParen,
    Op(CompareOp),
    Str(String),
    Number(f64),
}

impl fmt::Display for TokenKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenKind::Ident(name) => write!(f, "`{name}`"),
            TokenKind::Dot => f.write_str("`.`"),
            TokenKind::Not => f.write_str("`!`"),
            TokenKind::And => f.write_str("`&&`"),
            TokenKind::Or => f.write_str("`||`"),
            TokenKind::LParen => f.write_str("`(`"),
            TokenKind::RParen => f.write_str("`)`"),
            TokenKind::Op(op) => write!(f, "`{}`", op_text(*op)),
            TokenKind::Str(_) => f.write_str("a string"),
            TokenKind::Number(_) => f.write_str("a number"),
        }
    }
}

fn op_text(op: CompareOp) -> &'static str {
    match op {
        CompareOp::Eq => "==",
        CompareOp::Ne => "!=",
        CompareOp::Lt => "<",
        CompareOp::Le => "<=",
        CompareOp::Gt => ">",
        CompareOp::Ge => ">=",
    }
}

#[derive(Debug, Clone, PartialEq)]
struct Token {
    kind: TokenKind,
    offset: usize,
}

struct Lexer<'a> {
    source: &'a str,
    bytes: &'a [u8],
    position: usize,
}

impl<'a> Lexer<'a> {
    fn new(source: &'a str) -> Self {
        Self {
            source,
            bytes: source.as_bytes(),
            position: 0,
        }
    }

    fn tokenize(mut self) -> Result<Vec<Token>, ConditionError> {
        let mut tokens = Vec::new();
        while let Some(&byte) = self.bytes.get(self.position) {
            let offset = self.position;
            let two = self.bytes.get(offset..offset + 2);
            let kind = match byte {
                b' ' | b'\t' | b'\n' | b'\r' => {
                    self.position += 1;
                    continue;
                }
                b'.' => self.single(TokenKind::Dot),
                b'(' => self.single(TokenKind::LParen),
                b')' => self.single(TokenKind::RParen),
                b'&' if two == Some(b"&&") => self.double(TokenKind::And),
                b'|' if two == Some(b"||") => self.double(TokenKind::Or),
                b'=' if two == Some(b"==") => self.double(TokenKind::Op(CompareOp::Eq)),
                b'!' if two == Some(b"!=") => self.double(TokenKind::Op(CompareOp::Ne)),
                b'<' if two == Some(b"<=") => self.double(TokenKind::Op(CompareOp::Le)),
                b'>' if two == Some(b">=") => self.double(TokenKind::Op(CompareOp::Ge)),
                b'!' => self.single(TokenKind::Not),
                b'<' => self.single(TokenKind::Op(CompareOp::Lt)),
                b'>' => self.single(TokenKind::Op(CompareOp::Gt)),
                b'&' => return Err(ConditionError::new(offset, "expected `&&`, found `&`")),
                b'|' => return Err(ConditionError::new(offset, "expected `||`, found `|`")),
                b'=' => return Err(ConditionError::new(offset, "expected `==`, found `=`")),
                b'"' => TokenKind::Str(self.string()?),
                b'-' | b'0'..=b'9' => TokenKind::Number(self.number()?),
                b'a'..=b'z' | b'_' => TokenKind::Ident(self.ident()),
                _ => {
                    let found = self.source[offset..].chars().next().unwrap_or('?');
                    let hint = if found.is_ascii_uppercase() {
                        " (identifiers are lowercase: [a-z_][a-z0-9_]*)"
                    } else {
                        ""
                    };
                    return Err(ConditionError::new(
                        offset,
                        format!("unexpected character {found:?}{hint}"),
                    ));
                }
            };
            tokens.push(Token { kind, offset });
        }
        Ok(tokens)
    }

    fn single(&mut self, kind: TokenKind) -> TokenKind {
        self.position += 1;
        kind
    }

    fn double(&mut self, kind: TokenKind) -> TokenKind {
        self.position += 2;
        kind
    }

    fn ident(&mut self) -> String {
        let start = self.position;
        while let Some(b'a'..=b'z' | b'0'..=b'9' | b'_') = self.bytes.get(self.position) {
            self.position += 1;
        }
        self.source[start..self.position].to_owned()
    }

    /// A JSON number: `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`.
    fn number(&mut self) -> Result<f64, ConditionError> {
        let start = self.position;
        if self.bytes.get(self.position) == Some(&b'-') {
            self.position += 1;
        }
        match self.bytes.get(self.position) {
            Some(b'0') => {
                self.position += 1;
                if let Some(b'0'..=b'9') = self.bytes.get(self.position) {
                    return Err(ConditionError::new(
                        self.position,
                        "a number must not have leading zeros",
                    ));
                }
            }
            Some(b'1'..=b'9') => self.digits(),
            _ => {
                return Err(ConditionError::new(
                    self.position,
                    "expected a digit after `-`",
                ));
            }
        }
        if self.bytes.get(self.position) == Some(&b'.') {
            self.position += 1;
            self.required_digits("expected a digit after the decimal point")?;
        }
        if let Some(b'e' | b'E') = self.bytes.get(self.position) {
            self.position += 1;
            if let Some(b'+' | b'-') = self.bytes.get(self.position) {
                self.position += 1;
            }
            self.required_digits("expected a digit in the exponent")?;
        }
        let text = &self.source[start..self.position];
        match text.parse::<f64>() {
            Ok(value) if value.is_finite() => Ok(value),
            _ => Err(ConditionError::new(
                start,
                format!("number {text} is out of range"),
            )),
        }
    }

    fn digits(&mut self) {
        while let Some(b'0'..=b'9') = self.bytes.get(self.position) {
            self.position += 1;
        }
    }

    fn required_digits(&mut self, reason: &str) -> Result<(), ConditionError> {
        match self.bytes.get(self.position) {
            Some(b'0'..=b'9') => {
                self.digits();
                Ok(())
            }
            _ => Err(ConditionError::new(self.position, reason)),
        }
    }

    /// A JSON string with its escapes, starting at the opening quote.
    fn string(&mut self) -> Result<String, ConditionError> {
        let start = self.position;
        self.position += 1;
        let mut value = String::new();
        loop {
            let rest = &self.source[self.position..];
            let Some(c) = rest.chars().next() else {
                return Err(ConditionError::new(start, "unterminated string"));
            };
            match c {
                '"' => {
                    self.position += 1;
                    return Ok(value);
                }
                '\\' => value.push(self.escape()?),
                c if (c as u32) < 0x20 => {
                    return Err(ConditionError::new(
                        self.position,
                        "control characters in a string must be escaped",
                    ));
                }
                c => {
                    value.push(c);
                    self.position += c.len_utf8();
                }
            }
        }
    }

    /// One escape sequence starting at the backslash.
    fn escape(&mut self) -> Result<char, ConditionError> {
        let start = self.position;
        let Some(&kind) = self.bytes.get(self.position + 1) else {
            return Err(ConditionError::new(start, "unterminated escape sequence"));
        };
        self.position += 2;
        let c = match kind {
            b'"' => '"',
            b'\\' => '\\',
            b'/' => '/',
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => {
                let high = self.hex4(start)?;
                if (0xD800..0xDC00).contains(&high) {
                    // A UTF-16 surrogate pair: the low half must follow as another `\u` escape.
                    if self.bytes.get(self.position..self.position + 2) != Some(b"\\u") {
                        return Err(ConditionError::new(
                            start,
                            "a high surrogate must be followed by a low surrogate escape",
                        ));
                    }
                    self.position += 2;
                    let low = self.hex4(start)?;
                    if !(0xDC00..0xE000).contains(&low) {
                        return Err(ConditionError::new(start, "invalid low surrogate"));
                    }
                    let code = 0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00);
                    char::from_u32(code)
                        .ok_or_else(|| ConditionError::new(start, "invalid unicode escape"))?
                } else {
                    char::from_u32(high).ok_or_else(|| {
                        ConditionError::new(start, "a lone low surrogate is not a character")
                    })?
                }
            }
            _ => {
                return Err(ConditionError::new(
                    start,
                    "invalid escape sequence (JSON escapes: \\\" \\\\ \\/ \\b \\f \\n \\r \\t \\uXXXX)",
                ));
            }
        };
        Ok(c)
    }

    fn hex4(&mut self, escape_start: usize) -> Result<u32, ConditionError> {
        let digits = self
            .bytes
            .get(self.position..self.position + 4)
            .filter(|digits| digits.iter().all(u8::is_ascii_hexdigit))
            .ok_or_else(|| {
                ConditionError::new(escape_start, "expected four hex digits after \\u")
            })?;
        let value = digits
            .iter()
            .fold(0u32, |acc, digit| acc * 16 + hex_value(*digit));
        self.position += 4;
        Ok(value)
    }
}

fn hex_value(digit: u8) -> u32 {
    match digit {
        b'0'..=b'9' => u32::from(digit - b'0'),
        b'a'..=b'f' => u32::from(digit - b'a' + 10),
        b'A'..=b'F' => u32::from(digit - b'A' + 10),
        _ => 0,
    }
}

// ---------------------------------------------------------------------------------------------
// Parser: recursive descent over the grammar in proto/README.md.
// ---------------------------------------------------------------------------------------------

struct Parser {
    tokens: Vec<Token>,
    position: usize,
    /// Offset reported for errors at the end of the input.
    end: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.position)
    }

    fn peek_kind(&self) -> Option<&TokenKind> {
        self.peek().map(|token| &token.kind)
    }

    fn next(&mut self) -> Option<Token> {
        let token = self.tokens.get(self.position).cloned();
        if token.is_some() {
            self.position += 1;
        }
        token
    }

    fn error_here(&self, expected: &str) -> ConditionError {
        match self.peek() {
            Some(token) => ConditionError::new(
                token.offset,
                format!("expected {expected}, found {}", token.kind),
            ),
            None => ConditionError::new(
                self.end,
                format!("expected {expected}, found the end of the condition"),
            ),
        }
    }

    /// `or := and ( "||" and )*`
    fn expr(&mut self, depth: usize) -> Result<Expr, ConditionError> {
        let mut items = vec![self.and(depth)?];
        while self.peek_kind() == Some(&TokenKind::Or) {
            self.position += 1;
            items.push(self.and(depth)?);
        }
        Ok(single_or(items, Expr::Or))
    }

    /// `and := unary ( "&&" unary )*`
    fn and(&mut self, depth: usize) -> Result<Expr, ConditionError> {
        let mut items = vec![self.unary(depth)?];
        while self.peek_kind() == Some(&TokenKind::And) {
            self.position += 1;
            items.push(self.unary(depth)?);
        }
        Ok(single_or(items, Expr::And))
    }

    /// `unary := "!" unary | "(" expr ")" | compare`
    fn unary(&mut self, depth: usize) -> Result<Expr, ConditionError> {
        match self.peek().map(|token| (token.kind.clone(), token.offset)) {
            Some((TokenKind::Not, offset)) => {
                let depth = nested(depth, offset)?;
                self.position += 1;
                Ok(Expr::Not(Box::new(self.unary(depth)?)))
            }
            Some((TokenKind::LParen, offset)) => {
                let depth = nested(depth, offset)?;
                self.position += 1;
                let inner = self.expr(depth)?;
                match self.peek_kind() {
                    Some(TokenKind::RParen) => {
                        self.position += 1;
                        Ok(inner)
                    }
                    _ => Err(self.error_here("`)`")),
                }
            }
            _ => self.compare(),
        }
    }

    /// `compare := path ( op literal )?`
    fn compare(&mut self) -> Result<Expr, ConditionError> {
        let path = self.path()?;
        let op = match self.peek_kind() {
            Some(TokenKind::Op(op)) => *op,
            _ => return Ok(Expr::Truthy(path)),
        };
        self.position += 1;
        let literal = self.literal()?;
        Ok(Expr::Compare { path, op, literal })
    }

    /// `path := ident ( "." ident )*`
    fn path(&mut self) -> Result<Path, ConditionError> {
        let first = match self.peek() {
            Some(Token {
                kind: TokenKind::Ident(name),
                offset,
            }) => {
                if matches!(name.as_str(), "true" | "false" | "null") {
                    return Err(ConditionError::new(
                        *offset,
                        format!(
                            "expected a path, found the literal `{name}` (literals go on the right of a comparison)"
                        ),
                    ));
                }
                name.clone()
            }
            _ => return Err(self.error_here("a path")),
        };
        self.position += 1;
        let mut path = vec![first];
        while self.peek_kind() == Some(&TokenKind::Dot) {
            self.position += 1;
            match self.peek_kind() {
                Some(TokenKind::Ident(name)) => {
                    path.push(name.clone());
                    self.position += 1;
                }
                _ => return Err(self.error_here("an identifier after `.`")),
            }
        }
        Ok(path)
    }

    /// `literal := string | number | "true" | "false" | "null"`
    fn literal(&mut self) -> Result<Literal, ConditionError> {
        let expected = "a literal (string, number, true, false or null)";
        let literal = match self.peek_kind() {
            Some(TokenKind::Str(value)) => Literal::String(value.clone()),
            Some(TokenKind::Number(value)) => Literal::Number(*value),
            Some(TokenKind::Ident(name)) => match name.as_str() {
                "true" => Literal::Bool(true),
                "false" => Literal::Bool(false),
                "null" => Literal::Null,
                _ => return Err(self.error_here(expected)),
            },
            _ => return Err(self.error_here(expected)),
        };
        self.next();
        Ok(literal)
    }
}

fn nested(depth: usize, offset: usize) -> Result<usize, ConditionError> {
    if depth >= MAX_DEPTH {
        return Err(ConditionError::new(
            offset,
            format!("nesting deeper than {MAX_DEPTH} levels of `(` and `!`"),
        ));
    }
    Ok(depth + 1)
}

fn single_or(mut items: Vec<Expr>, combine: fn(Vec<Expr>) -> Expr) -> Expr {
    if items.len() == 1
        && let Some(item) = items.pop()
    {
        return item;
    }
    combine(items)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    /// A scope over a fixed map from dotted path to value.
    struct MapScope(HashMap<String, Operand>);

    impl Scope for MapScope {
        fn lookup(&self, path: &[String]) -> Operand {
            self.0
                .get(&path.join("."))
                .cloned()
                .unwrap_or(Operand::Null)
        }
    }

    fn level(name: &str) -> Operand {
        let values: Vec<(String, i32)> =
            ["unspecified", "none", "low", "moderate", "high", "critical"]
                .iter()
                .zip(0..)
                .map(|(name, number)| ((*name).to_owned(), number))
                .collect();
        let number = values
            .iter()
            .find(|(value, _)| value == name)
            .map(|(_, number)| *number)
            .unwrap();
        Operand::Enum {
            name: name.to_owned(),
            number,
            values,
        }
    }

    fn scope() -> MapScope {
        let entries = [
            ("ipa.intent", Operand::String("move".into())),
            ("ipa.confidence", Operand::Number(0.75)),
            ("ipa.tone.valence", Operand::Number(-0.6)),
            ("ipa.safety.crisis", Operand::Bool(false)),
            ("ipa.safety.level", level("high")),
            ("ipa.unset_level", level("unspecified")),
            ("ipa.empty", Operand::String(String::new())),
            ("ipa.zero", Operand::Number(0.0)),
            ("ipa.nan", Operand::Number(f64::NAN)),
            ("wba.applied", Operand::Bool(true)),
            ("wba.version", Operand::Number(3.0)),
            ("custom.name", Operand::String("Grüße, 世界 🌲".into())),
        ];
        MapScope(
            entries
                .into_iter()
                .map(|(path, value)| (path.to_owned(), value))
                .collect(),
        )
    }

    fn eval_str(source: &str) -> bool {
        Condition::parse(source)
            .unwrap_or_else(|err| panic!("{source:?} does not parse: {err}"))
            .eval(&scope())
    }

    fn error(source: &str) -> ConditionError {
        match Condition::parse(source) {
            Ok(condition) => panic!("{source:?} parsed as {condition:?}"),
            Err(err) => err,
        }
    }

    #[test]
    fn bare_paths_test_truthiness() {
        assert!(eval_str("wba.applied"));
        assert!(eval_str("ipa.intent"));
        assert!(eval_str("ipa.confidence"));
        assert!(eval_str("ipa.safety.level"));
        assert!(!eval_str("ipa.safety.crisis"));
        assert!(!eval_str("ipa.empty"));
        assert!(!eval_str("ipa.zero"));
        assert!(!eval_str("ipa.nan"));
        assert!(!eval_str("ipa.unset_level"));
        assert!(!eval_str("missing.path"));
    }

    #[test]
    fn equality_on_every_type() {
        assert!(eval_str(r#"ipa.intent == "move""#));
        assert!(!eval_str(r#"ipa.intent == "quit""#));
        assert!(eval_str(r#"ipa.intent != "quit""#));
        assert!(!eval_str(r#"ipa.intent != "move""#));
        assert!(eval_str("wba.applied == true"));
        assert!(eval_str("wba.applied != false"));
        assert!(eval_str("ipa.safety.crisis == false"));
        assert!(eval_str("wba.version == 3"));
        assert!(eval_str("wba.version == 3.0"));
        assert!(eval_str("wba.version == 3e0"));
        assert!(eval_str("wba.version != 4"));
    }

    #[test]
    fn ordering_operators_on_numbers() {
        assert!(eval_str("ipa.tone.valence < -0.5"));
        assert!(!eval_str("ipa.tone.valence > -0.5"));
        assert!(eval_str("ipa.confidence >= 0.75"));
        assert!(eval_str("ipa.confidence <= 0.75"));
        assert!(!eval_str("ipa.confidence < 0.75"));
        assert!(!eval_str("ipa.confidence > 0.75"));
        assert!(eval_str("wba.version > 2"));
        assert!(eval_str("wba.version < 3.5"));
        assert!(eval_str("wba.version >= -1E2"));
    }

    #[test]
    fn ordering_operators_on_strings_are_lexicographic() {
        assert!(eval_str(r#"ipa.intent > "look""#));
        assert!(eval_str(r#"ipa.intent < "quit""#));
        assert!(eval_str(r#"ipa.intent <= "move""#));
        assert!(eval_str(r#"ipa.intent >= "move""#));
    }

    #[test]
    fn enums_compare_by_short_name_and_order_by_number() {
        assert!(eval_str(r#"ipa.safety.level == "high""#));
        assert!(!eval_str(r#"ipa.safety.level == "critical""#));
        assert!(eval_str(r#"ipa.safety.level != "critical""#));
        assert!(eval_str(r#"ipa.safety.level >= "high""#));
        assert!(eval_str(r#"ipa.safety.level > "moderate""#));
        assert!(!eval_str(r#"ipa.safety.level > "high""#));
        assert!(eval_str(r#"ipa.safety.level < "critical""#));
        assert!(eval_str(r#"ipa.safety.level <= "high""#));
        // Lexicographically "high" < "low", numerically HIGH > LOW: numbers win.
        assert!(eval_str(r#"ipa.safety.level > "low""#));
    }

    #[test]
    fn unknown_enum_names_make_every_comparison_false() {
        for op in ["==", "!=", "<", "<=", ">", ">="] {
            let source = format!(r#"ipa.safety.level {op} "severe""#);
            assert!(!eval_str(&source), "{source}");
        }
        // Enums compare with string literals only.
        assert!(!eval_str("ipa.safety.level == 4"));
        assert!(!eval_str("ipa.safety.level != 4"));
    }

    #[test]
    fn missing_paths_are_null() {
        assert!(eval_str("missing == null"));
        assert!(!eval_str("missing != null"));
        assert!(eval_str("ipa.intent != null"));
        assert!(!eval_str("ipa.intent == null"));
        assert!(!eval_str(r#"missing == "move""#));
        assert!(!eval_str(r#"missing != "move""#));
        assert!(!eval_str("missing < 1"));
        assert!(!eval_str("missing >= 0"));
        assert!(!eval_str("missing == false"));
        assert!(eval_str("!missing"));
        assert!(!eval_str("missing <= null"));
    }

    #[test]
    fn type_mismatches_are_false_for_every_operator() {
        for op in ["==", "!=", "<", "<=", ">", ">="] {
            for (path, literal) in [
                ("ipa.intent", "1"),
                ("ipa.intent", "true"),
                ("ipa.confidence", r#""0.75""#),
                ("ipa.confidence", "true"),
                ("wba.applied", "1"),
                ("wba.applied", r#""true""#),
            ] {
                let source = format!("{path} {op} {literal}");
                assert!(!eval_str(&source), "{source}");
            }
        }
        // Booleans have no order.
        assert!(!eval_str("wba.applied > false"));
        assert!(!eval_str("wba.applied >= true"));
    }

    #[test]
    fn nan_is_unordered() {
        assert!(!eval_str("ipa.nan == 0"));
        assert!(eval_str("ipa.nan != 0"));
        assert!(!eval_str("ipa.nan < 1"));
        assert!(!eval_str("ipa.nan >= 1"));
    }

    #[test]
    fn precedence_and_binds_tighter_than_or() {
        // true || (false && false) = true; (true || false) && false would be false.
        assert!(eval_str("wba.applied || ipa.safety.crisis && missing"));
        // (false && true) || true = true
        assert!(eval_str("ipa.safety.crisis && wba.applied || wba.applied"));
        assert!(!eval_str("(wba.applied || ipa.safety.crisis) && missing"));
        // `!` binds tighter than `&&` and `||`.
        assert!(eval_str("!ipa.safety.crisis && wba.applied"));
        assert!(!eval_str("!wba.applied || ipa.safety.crisis"));
        assert!(eval_str("!(wba.applied && ipa.safety.crisis)"));
        // `!` applies to the whole comparison.
        assert!(eval_str(r#"!ipa.intent == "quit""#));
        assert!(!eval_str(r#"!ipa.intent == "move""#));
        assert!(eval_str("!!wba.applied"));
    }

    #[test]
    fn combined_example_from_the_contract() {
        assert!(eval_str(r#"!ipa.safety.crisis && ipa.intent != "quit""#));
        assert!(eval_str(
            "(ipa.safety.level >= \"high\" || ipa.tone.valence < -0.5) && wba.applied"
        ));
    }

    #[test]
    fn whitespace_is_free() {
        assert!(eval_str(
            "  wba.applied&&ipa.intent==\"move\"\n\t|| missing "
        ));
        assert!(eval_str("ipa . intent == \"move\""));
    }

    #[test]
    fn strings_decode_json_escapes_and_unicode() {
        assert!(eval_str(r#"custom.name == "Grüße, 世界 🌲""#));
        assert!(eval_str(
            r#"custom.name == "Gr\u00fc\u00dfe, \u4e16\u754c \ud83c\udf32""#
        ));
        let condition = Condition::parse(r#"a == "q\"b\\s\/n\nr\rt\tb\bf\f""#).unwrap();
        let Expr::Compare { literal, .. } = &condition.expr else {
            panic!("{condition:?}")
        };
        assert_eq!(
            literal,
            &Literal::String("q\"b\\s/n\nr\rt\tb\u{8}f\u{c}".into())
        );
    }

    #[test]
    fn numbers_follow_json() {
        for (source, expected) in [
            ("a == 0", 0.0),
            ("a == -0.5", -0.5),
            ("a == 12.25", 12.25),
            ("a == 1e3", 1000.0),
            ("a == 2.5E-1", 0.25),
            ("a == -7", -7.0),
        ] {
            let condition = Condition::parse(source).unwrap();
            let Expr::Compare { literal, .. } = &condition.expr else {
                panic!("{condition:?}")
            };
            assert_eq!(literal, &Literal::Number(expected), "{source}");
        }
        assert_eq!(error("a == 01").offset, 6);
        assert_eq!(error("a == 1.").offset, 7);
        assert_eq!(error("a == 1e").offset, 7);
        assert_eq!(error("a == -x").offset, 6);
        assert_eq!(error("a == .5").offset, 5);
        assert_eq!(error("a == 1e999").offset, 5);
    }

    #[test]
    fn source_and_paths_are_reported() {
        let source = r#"!ipa.safety.crisis && (ipa.intent == "move" || wba.applied)"#;
        let condition = Condition::parse(source).unwrap();
        assert_eq!(condition.source(), source);
        assert_eq!(condition.to_string(), source);
        let paths: Vec<Vec<&str>> = condition
            .paths()
            .iter()
            .map(|path| path.iter().map(String::as_str).collect())
            .collect();
        assert_eq!(
            paths,
            vec![
                vec!["ipa", "safety", "crisis"],
                vec!["ipa", "intent"],
                vec!["wba", "applied"],
            ]
        );
    }

    #[test]
    fn parsing_is_deterministic_and_comparable() {
        let a = Condition::parse("a && b || !c").unwrap();
        let b = Condition::parse("a && b || !c").unwrap();
        assert_eq!(a, b);
        assert_eq!(a.clone(), a);
        assert_ne!(a, Condition::parse("a && (b || !c)").unwrap());
    }

    #[test]
    fn errors_name_the_offset() {
        let cases: &[(&str, usize, &str)] = &[
            ("", 0, "expected an expression"),
            ("   ", 3, "expected an expression"),
            ("a &&", 4, "expected a path, found the end"),
            ("a || && b", 5, "expected a path, found `&&`"),
            ("a & b", 2, "expected `&&`"),
            ("a | b", 2, "expected `||`"),
            ("a = 1", 2, "expected `==`"),
            ("a == b", 5, "expected a literal"),
            ("a ==", 4, "expected a literal"),
            ("(a && b", 7, "expected `)`"),
            ("a && b)", 6, "expected `&&`, `||` or the end, found `)`"),
            ("a b", 2, "found `b`"),
            ("a.", 2, "expected an identifier after `.`"),
            ("a..b", 2, "expected an identifier after `.`"),
            (".a", 0, "expected a path"),
            ("A == 1", 0, "identifiers are lowercase"),
            ("ipa.Intent", 4, "identifiers are lowercase"),
            ("a == 'x'", 5, "unexpected character '\\''"),
            ("a == \"x", 5, "unterminated string"),
            ("a == \"x\\q\"", 7, "invalid escape sequence"),
            ("a == \"\\u12\"", 6, "expected four hex digits"),
            ("a == \"\\ud83c\"", 6, "low surrogate"),
            ("a == \"\\udf32\"", 6, "lone low surrogate"),
            ("a == \"tab\there\"", 9, "control characters"),
            ("true", 0, "found the literal `true`"),
            ("null == null", 0, "found the literal `null`"),
            ("1 == a", 0, "expected a path, found a number"),
            ("a == 1 == 2", 7, "expected `&&`, `||` or the end"),
            ("()", 1, "expected a path, found `)`"),
            ("é", 0, "unexpected character 'é'"),
        ];
        for (source, offset, reason) in cases {
            let err = error(source);
            assert_eq!(err.offset, *offset, "{source:?}: {err}");
            assert!(
                err.reason.contains(reason),
                "{source:?}: {err} does not contain {reason:?}"
            );
        }
    }

    #[test]
    fn error_display_leads_with_the_offset() {
        let err = error("a == b");
        assert_eq!(
            err.to_string(),
            "at offset 5: expected a literal (string, number, true, false or null), found `b`"
        );
        let boxed: Box<dyn std::error::Error> = Box::new(err);
        assert!(boxed.to_string().starts_with("at offset 5"));
    }

    #[test]
    fn nesting_up_to_the_limit_parses_and_deeper_is_an_error() {
        let deep = format!("{}a{}", "(".repeat(MAX_DEPTH), ")".repeat(MAX_DEPTH));
        assert!(!Condition::parse(&deep).unwrap().eval(&scope()));
        let too_deep = format!(
            "{}a{}",
            "(".repeat(MAX_DEPTH + 1),
            ")".repeat(MAX_DEPTH + 1)
        );
        let err = error(&too_deep);
        assert_eq!(err.offset, MAX_DEPTH);
        assert!(err.reason.contains("nesting"), "{err}");

        let nots = format!("{}wba.applied", "!".repeat(MAX_DEPTH));
        assert!(Condition::parse(&nots).unwrap().eval(&scope()));
        assert_eq!(
            error(&format!("{}a", "!".repeat(MAX_DEPTH + 1))).offset,
            MAX_DEPTH
        );

        // Mixed: each `!(` pair uses two levels.
        let mixed = format!(
            "{}a{}",
            "!(".repeat(MAX_DEPTH / 2),
            ")".repeat(MAX_DEPTH / 2)
        );
        assert!(Condition::parse(&mixed).is_ok());
        let mixed = format!(
            "{}a{}",
            "!(".repeat(MAX_DEPTH / 2 + 1),
            ")".repeat(MAX_DEPTH / 2 + 1)
        );
        assert_eq!(error(&mixed).offset, MAX_DEPTH);
    }

    #[test]
    fn hostile_nesting_is_an_error_not_a_stack_overflow() {
        // Within the byte limit, deep nesting fails on depth; beyond it, on length.
        let err = error(&"(".repeat(MAX_SOURCE_BYTES));
        assert!(err.reason.contains("nesting"), "{err}");
        let err = error(&"!".repeat(100_000));
        assert_eq!(err.offset, MAX_SOURCE_BYTES);
    }

    #[test]
    fn long_flat_chains_within_the_byte_limit_parse() {
        let chain = vec!["a"; 300].join("||");
        assert!(chain.len() <= MAX_SOURCE_BYTES);
        let condition = Condition::parse(&chain).unwrap();
        assert_eq!(condition.paths().len(), 300);
        assert!(!condition.eval(&scope()));
        let chain = format!("{}||wba.applied", vec!["a"; 300].join("||"));
        assert!(Condition::parse(&chain).unwrap().eval(&scope()));
    }

    #[test]
    fn source_length_limit() {
        let at_limit = format!("a == \"{}\"", "x".repeat(MAX_SOURCE_BYTES - 7));
        assert_eq!(at_limit.len(), MAX_SOURCE_BYTES);
        assert!(Condition::parse(&at_limit).is_ok());
        let over = format!("a == \"{}\"", "x".repeat(MAX_SOURCE_BYTES - 6));
        let err = error(&over);
        assert_eq!(err.offset, MAX_SOURCE_BYTES);
        assert!(err.reason.contains("at most 1024"), "{err}");
    }

    #[test]
    fn identifiers_allow_digits_and_underscores() {
        let condition = Condition::parse("step_2.field_1._x").unwrap();
        assert_eq!(
            condition.paths(),
            vec![&["step_2", "field_1", "_x"].map(String::from)[..]]
        );
        // An identifier does not start with a digit: `2a` lexes as the number 2, then `a`.
        assert_eq!(error("2a").offset, 0);
    }
}
