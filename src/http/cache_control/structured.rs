//! The Dictionary of RFC 8941 (Structured Field Values), as targeted cache-control fields
//! (RFC 9213 §2.1) use it. Strict by design: RFC 9213 ignores a targeted field that does not
//! parse, and two caches that repaired it differently would disagree about the response.
//! Parameters are parsed (to reject bad syntax) but not kept: no cache directive defines any.

/// A member's value, as far as cache directives need it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Value {
    Integer(i64),
    String(String),
    Token(String),
    Boolean(bool),
    /// A Decimal, Byte Sequence or Inner List: no cache directive takes one.
    Other,
}

/// The field is not a valid Dictionary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Invalid;

/// RFC 8941 §4.2.2: the members of a Dictionary, in order; a repeated key keeps its first
/// position and its last value.
pub(super) fn parse_dictionary(input: &str) -> Result<Vec<(String, Value)>, Invalid> {
    let mut parser = Parser {
        rest: input.trim_matches(' ').as_bytes(),
    };
    let mut members: Vec<(String, Value)> = Vec::new();
    while !parser.rest.is_empty() {
        let key = parser.key()?;
        let value = if parser.eat(b'=') {
            parser.item_or_inner_list()?
        } else {
            parser.parameters()?;
            Value::Boolean(true)
        };
        match members.iter_mut().find(|(existing, _)| *existing == key) {
            Some((_, slot)) => *slot = value,
            None => members.push((key, value)),
        }
        parser.skip_ows();
        if parser.rest.is_empty() {
            break;
        }
        if !parser.eat(b',') {
            return Err(Invalid);
        }
        parser.skip_ows();
        // A trailing comma is an error.
        if parser.rest.is_empty() {
            return Err(Invalid);
        }
    }
    Ok(members)
}

struct Parser<'a> {
    rest: &'a [u8],
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.rest.first().copied()
    }

    fn bump(&mut self) -> Option<u8> {
        let (&first, rest) = self.rest.split_first()?;
        self.rest = rest;
        Some(first)
    }

    fn eat(&mut self, byte: u8) -> bool {
        let matched = self.peek() == Some(byte);
        if matched {
            self.rest = &self.rest[1..];
        }
        matched
    }

    fn skip_while(&mut self, keep: impl Fn(u8) -> bool) -> &[u8] {
        let end = self
            .rest
            .iter()
            .position(|&byte| !keep(byte))
            .unwrap_or(self.rest.len());
        let (taken, rest) = self.rest.split_at(end);
        self.rest = rest;
        taken
    }

    fn skip_ows(&mut self) {
        self.skip_while(|byte| byte == b' ' || byte == b'\t');
    }

    /// §4.2.3.3: `( lcalpha / "*" ) *( lcalpha / DIGIT / "_" / "-" / "." / "*" )`.
    fn key(&mut self) -> Result<String, Invalid> {
        match self.peek() {
            Some(first) if first.is_ascii_lowercase() || first == b'*' => {}
            _ => return Err(Invalid),
        }
        let key = self.skip_while(|byte| {
            byte.is_ascii_lowercase() || byte.is_ascii_digit() || b"_-.*".contains(&byte)
        });
        Ok(String::from_utf8_lossy(key).into_owned())
    }

    /// §4.2.1.1: an Item or an Inner List, each with its parameters.
    fn item_or_inner_list(&mut self) -> Result<Value, Invalid> {
        let value = if self.peek() == Some(b'(') {
            self.inner_list()?;
            Value::Other
        } else {
            self.bare_item()?
        };
        self.parameters()?;
        Ok(value)
    }

    /// §4.2.1.2: `( *SP [ item *( 1*SP item ) *SP ] )`, items with their parameters.
    fn inner_list(&mut self) -> Result<(), Invalid> {
        self.bump();
        loop {
            self.skip_while(|byte| byte == b' ');
            if self.eat(b')') {
                return Ok(());
            }
            self.bare_item()?;
            self.parameters()?;
            match self.peek() {
                Some(b' ' | b')') => {}
                _ => return Err(Invalid),
            }
        }
    }

    /// §4.2.3.2: `*( ";" *SP key [ "=" bare-item ] )`.
    fn parameters(&mut self) -> Result<(), Invalid> {
        while self.eat(b';') {
            self.skip_while(|byte| byte == b' ');
            self.key()?;
            if self.eat(b'=') {
                self.bare_item()?;
            }
        }
        Ok(())
    }

    /// §4.2.3.1.
    fn bare_item(&mut self) -> Result<Value, Invalid> {
        match self.peek() {
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(b'"') => self.string(),
            Some(b':') => self.byte_sequence(),
            Some(b'?') => self.boolean(),
            Some(first) if first.is_ascii_alphabetic() || first == b'*' => Ok(self.token()),
            _ => Err(Invalid),
        }
    }

    /// §4.2.4: at most 15 integer digits; a Decimal has at most 12 before the point and 1 to 3
    /// after it.
    fn number(&mut self) -> Result<Value, Invalid> {
        let negative = self.eat(b'-');
        let digits = self.skip_while(|byte| byte.is_ascii_digit());
        let length = digits.len();
        if length == 0 || length > 15 {
            return Err(Invalid);
        }
        let integer = std::str::from_utf8(digits)
            .ok()
            .and_then(|digits| digits.parse::<i64>().ok())
            .ok_or(Invalid)?;
        if !self.eat(b'.') {
            return Ok(Value::Integer(if negative { -integer } else { integer }));
        }
        let fraction = self.skip_while(|byte| byte.is_ascii_digit());
        if length > 12 || !(1..=3).contains(&fraction.len()) {
            return Err(Invalid);
        }
        Ok(Value::Other)
    }

    /// §4.2.5: printable ASCII between quotes; only `\"` and `\\` escapes.
    fn string(&mut self) -> Result<Value, Invalid> {
        self.bump();
        let mut text = String::new();
        loop {
            match self.bump().ok_or(Invalid)? {
                b'"' => return Ok(Value::String(text)),
                b'\\' => match self.bump() {
                    Some(escaped @ (b'"' | b'\\')) => text.push(char::from(escaped)),
                    _ => return Err(Invalid),
                },
                byte @ 0x20..=0x7e => text.push(char::from(byte)),
                _ => return Err(Invalid),
            }
        }
    }

    /// §4.2.6: `( ALPHA / "*" ) *( tchar / ":" / "/" )`.
    fn token(&mut self) -> Value {
        let token = self.skip_while(|byte| is_tchar(byte) || byte == b':' || byte == b'/');
        Value::Token(String::from_utf8_lossy(token).into_owned())
    }

    /// §4.2.7: base64 between colons.
    fn byte_sequence(&mut self) -> Result<Value, Invalid> {
        self.bump();
        self.skip_while(|byte| byte.is_ascii_alphanumeric() || b"+/=".contains(&byte));
        if self.eat(b':') {
            Ok(Value::Other)
        } else {
            Err(Invalid)
        }
    }

    /// §4.2.8: `?0` or `?1`.
    fn boolean(&mut self) -> Result<Value, Invalid> {
        self.bump();
        match self.bump() {
            Some(b'1') => Ok(Value::Boolean(true)),
            Some(b'0') => Ok(Value::Boolean(false)),
            _ => Err(Invalid),
        }
    }
}

/// RFC 9110 §5.6.2.
fn is_tchar(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn arbitrary_input_never_panics(input in "[ -~\t]{0,64}") {
            let _ = parse_dictionary(&input);
        }
    }

    fn parse(input: &str) -> Result<Vec<(String, Value)>, Invalid> {
        parse_dictionary(input)
    }

    #[test]
    fn members_take_every_bare_item_type() {
        assert_eq!(
            parse(
                r#"max-age=60, no-store, private="a, b", x=tok/1, y=?0, z=1.5, b=:aGk=:, l=(1 2)"#
            ),
            Ok(vec![
                ("max-age".into(), Value::Integer(60)),
                ("no-store".into(), Value::Boolean(true)),
                ("private".into(), Value::String("a, b".into())),
                ("x".into(), Value::Token("tok/1".into())),
                ("y".into(), Value::Boolean(false)),
                ("z".into(), Value::Other),
                ("b".into(), Value::Other),
                ("l".into(), Value::Other),
            ])
        );
    }

    #[test]
    fn parameters_are_accepted_and_dropped() {
        assert_eq!(
            parse("max-age=60;a=1;b, no-cache;c=\"x\""),
            Ok(vec![
                ("max-age".into(), Value::Integer(60)),
                ("no-cache".into(), Value::Boolean(true)),
            ])
        );
    }

    #[test]
    fn a_repeated_key_keeps_its_last_value() {
        assert_eq!(
            parse("max-age=1, max-age=2"),
            Ok(vec![("max-age".into(), Value::Integer(2))])
        );
    }

    #[test]
    fn what_is_not_a_dictionary_is_invalid() {
        for input in [
            "max-age=10000, &&&&&",
            "MaX-aGe=60",
            "max-age =100",
            "max-age= 100",
            "max-age=60,",
            "max-age=60 no-store",
            "max-age=1234567890123456",
            "max-age=1.2345",
            "max-age=\"open",
            "x=\"bad \\n escape\"",
            "x=:no-end",
            "x=?2",
            "x=(1 2",
            "x=é",
        ] {
            assert_eq!(parse(input), Err(Invalid), "{input:?}");
        }
    }

    #[test]
    fn surrounding_spaces_and_empty_input_are_fine() {
        assert_eq!(parse(""), Ok(Vec::new()));
        assert_eq!(
            parse("  max-age=5 ,\tpublic  "),
            Ok(vec![
                ("max-age".into(), Value::Integer(5)),
                ("public".into(), Value::Boolean(true)),
            ])
        );
    }
}
