//! The JSON reader: [`Obj`] reads an object field by field, remembering where it is, so that every
//! problem names its place in the file (`servers[2].port`) and what was found there.

use super::error::{bad, expected, FieldError, Problem};
use serde_json::{Map, Value};

/// A JSON object being read field by field, remembering where it is for error messages.
pub(super) struct Obj<'a> {
    map: &'a Map<String, Value>,
    at: String,
}

impl<'a> Obj<'a> {
    pub(super) fn new(v: &'a Value, at: &str) -> Result<Self, FieldError> {
        match v {
            Value::Object(map) => Ok(Obj { map, at: at.to_string() }),
            other => Err(expected(where_(at), "an object", describe(other))),
        }
    }

    pub(super) fn path(&self, key: &str) -> String {
        if self.at.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.at)
        }
    }

    pub(super) fn get(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    pub(super) fn require(&self, key: &str) -> Result<&'a Value, FieldError> {
        self.get(key).ok_or_else(|| bad(self.path(key), Problem::Missing))
    }

    pub(super) fn string(&self, key: &str) -> Result<Option<String>, FieldError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) if !s.is_empty() => Ok(Some(s.clone())),
            Some(other) => Err(expected(self.path(key), "a non-empty string", describe(other))),
        }
    }

    pub(super) fn required_string(&self, key: &str) -> Result<String, FieldError> {
        self.require(key)?;
        Ok(self.string(key)?.expect("present"))
    }

    pub(super) fn integer(&self, key: &str, min: u64, max: u64) -> Result<Option<u64>, FieldError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => match v.as_u64() {
                Some(n) if (min..=max).contains(&n) => Ok(Some(n)),
                _ => Err(expected(self.path(key), format!("an integer from {min} to {max}"), describe(v))),
            },
        }
    }

    pub(super) fn boolean(&self, key: &str) -> Result<Option<bool>, FieldError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(other) => Err(expected(self.path(key), "true or false", describe(other))),
        }
    }

    pub(super) fn required_integer(&self, key: &str, min: u64, max: u64) -> Result<u64, FieldError> {
        self.require(key)?;
        Ok(self.integer(key, min, max)?.expect("present"))
    }

    /// Refuses keys this object does not know, so that a typo is an error rather than a silent default.
    pub(super) fn only(&self, known: &[&str]) -> Result<(), FieldError> {
        match self.map.keys().find(|k| !known.contains(&k.as_str())) {
            Some(k) => Err(bad(self.path(k), Problem::UnknownField { known: known.join(", ") })),
            None => Ok(()),
        }
    }
}

pub(super) fn where_(at: &str) -> &str {
    if at.is_empty() {
        "top level"
    } else {
        at
    }
}

pub(super) fn describe(v: &Value) -> String {
    let text = v.to_string();
    if text.len() > 40 {
        format!("{}…", &text[..text.char_indices().nth(40).map_or(text.len(), |(i, _)| i)])
    } else {
        text
    }
}
