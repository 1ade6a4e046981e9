//! Google-style JSON text, as the legacy Places API writes it.
//!
//! PROTOCOL section 3: three-space indent, `"key" : value`, keys in the order received, an array of
//! scalars inline with inner spaces (`[ "a", "b" ]`), an empty array as `[]`, an array holding objects or
//! arrays one element per line, `<` and `>` inside strings as `\u003c` and `\u003e`, other non-ASCII text
//! as raw UTF-8. Numbers are written with the exact text they were parsed from (serde_json's
//! `arbitrary_precision`), so re-serializing Google's body never changes a coordinate.

use serde_json::{Map, Value};

const INDENT: usize = 3;

/// Appends `value` to `out` in Google's style, the outermost value at indent 0, with no trailing newline.
pub fn write(out: &mut Vec<u8>, value: &Value) {
    write_value(out, value, 0);
}

/// Convenience wrapper around [`write`].
pub fn to_vec(value: &Value) -> Vec<u8> {
    let mut out = Vec::with_capacity(1024);
    write(&mut out, value);
    out
}

fn write_value(out: &mut Vec<u8>, value: &Value, indent: usize) {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(n) => out.extend_from_slice(n.to_string().as_bytes()),
        Value::String(s) => write_string(out, s),
        Value::Array(items) => write_array(out, items, indent),
        Value::Object(map) => write_object(out, map, indent),
    }
}

fn write_object(out: &mut Vec<u8>, map: &Map<String, Value>, indent: usize) {
    if map.is_empty() {
        out.extend_from_slice(b"{}");
        return;
    }
    out.extend_from_slice(b"{\n");
    for (i, (key, value)) in map.iter().enumerate() {
        if i > 0 {
            out.extend_from_slice(b",\n");
        }
        pad(out, indent + INDENT);
        write_string(out, key);
        out.extend_from_slice(b" : ");
        write_value(out, value, indent + INDENT);
    }
    out.push(b'\n');
    pad(out, indent);
    out.push(b'}');
}

fn write_array(out: &mut Vec<u8>, items: &[Value], indent: usize) {
    if items.is_empty() {
        out.extend_from_slice(b"[]");
        return;
    }
    let scalars = items.iter().all(|v| !v.is_object() && !v.is_array());
    if scalars {
        out.extend_from_slice(b"[ ");
        for (i, item) in items.iter().enumerate() {
            if i > 0 {
                out.extend_from_slice(b", ");
            }
            write_value(out, item, indent);
        }
        out.extend_from_slice(b" ]");
        return;
    }
    out.extend_from_slice(b"[\n");
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.extend_from_slice(b",\n");
        }
        pad(out, indent + INDENT);
        write_value(out, item, indent + INDENT);
    }
    out.push(b'\n');
    pad(out, indent);
    out.push(b']');
}

fn pad(out: &mut Vec<u8>, n: usize) {
    out.resize(out.len() + n, b' ');
}

fn write_string(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    for &b in s.as_bytes() {
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0x08 => out.extend_from_slice(b"\\b"),
            0x0c => out.extend_from_slice(b"\\f"),
            b'<' => out.extend_from_slice(b"\\u003c"),
            b'>' => out.extend_from_slice(b"\\u003e"),
            0x00..=0x1f | 0x7f => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(b"\\u00");
                out.push(HEX[(b >> 4) as usize]);
                out.push(HEX[(b & 0xf) as usize]);
            }
            // Non-ASCII UTF-8 bytes pass through raw, as Google writes them.
            _ => out.push(b),
        }
    }
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_example_round_trips_byte_for_byte() {
        let text = r#"{
   "html_attributions" : [],
   "results" : [
      {
         "geometry" : {
            "location" : {
               "lat" : 34.068921,
               "lng" : -118.445181
            }
         },
         "name" : "University of California, Los Angeles",
         "types" : [ "university", "establishment" ],
         "vicinity" : "Los Angeles"
      }
   ],
   "status" : "OK"
}"#;
        let value: Value = serde_json::from_str(text).unwrap();
        assert_eq!(String::from_utf8(to_vec(&value)).unwrap(), text);
    }

    #[test]
    fn strings_escape_angle_brackets_and_keep_utf8() {
        let value: Value =
            serde_json::from_str(r#"{"a": "<a href=\"x\">Zürich</a>\n", "e": {}, "n": [1.50, -0, 7]}"#).unwrap();
        let text = String::from_utf8(to_vec(&value)).unwrap();
        assert!(text.contains(r#""\u003ca href=\"x\"\u003eZürich\u003c/a\u003e\n""#), "{text}");
        assert!(text.contains(r#""e" : {}"#), "{text}");
        assert!(text.contains(r#""n" : [ 1.50, -0, 7 ]"#), "{text}");
    }

    #[test]
    fn every_escape_is_written_as_json_spells_it() {
        // Expected text written out by hand (RFC 8259 section 7 and Google's `\u003c`), one byte each.
        let cases: [(&str, &str); 12] = [
            ("\"", r#""\"""#),
            ("\\", r#""\\""#),
            ("\n", r#""\n""#),
            ("\r", r#""\r""#),
            ("\t", r#""\t""#),
            ("\u{8}", r#""\b""#),
            ("\u{c}", r#""\f""#),
            ("<", r#""\u003c""#),
            (">", r#""\u003e""#),
            ("\u{0}", r#""\u0000""#),
            ("\u{1f}", r#""\u001f""#),
            ("\u{7f}", r#""\u007f""#),
        ];
        for (raw, want) in cases {
            let mut out = Vec::new();
            write_string(&mut out, raw);
            assert_eq!(String::from_utf8(out).unwrap(), want, "{raw:?}");
        }
    }

    #[test]
    fn nested_arrays_go_one_per_line() {
        let value = serde_json::json!([[1], []]);
        assert_eq!(String::from_utf8(to_vec(&value)).unwrap(), "[\n   [ 1 ],\n   []\n]");
    }
}
