//! The OpenAPI document as the tests read it, and a small checker of JSON values against its
//! schemas: enough of JSON Schema for what the document uses ($ref, type, properties,
//! required, additionalProperties, items, enum, oneOf, minimum/maximum).

use serde_json::Value;

pub struct Doc(pub Value);

impl Doc {
    pub fn load() -> Doc {
        // Read at run time: a test binary reused from a checkout at another path (a shared
        // target dir) would otherwise look there.
        let dir = std::env::var_os("CARGO_MANIFEST_DIR").map_or_else(
            || env!("CARGO_MANIFEST_DIR").into(),
            std::path::PathBuf::from,
        );
        let text = std::fs::read_to_string(dir.join("openapi.json")).expect("openapi.json");
        Doc(serde_json::from_str(&text).expect("openapi.json is JSON"))
    }

    /// Every (METHOD, path) the document describes.
    pub fn operations(&self) -> Vec<(String, String, &Value)> {
        let mut out = Vec::new();
        for (path, item) in self.0["paths"].as_object().expect("paths") {
            for (method, op) in item.as_object().expect("path item") {
                if ["get", "put", "post", "delete", "patch", "head", "options"]
                    .contains(&method.as_str())
                {
                    out.push((method.to_uppercase(), path.clone(), op));
                }
            }
        }
        out
    }

    pub fn operation(&self, method: &str, path: &str) -> &Value {
        let op = &self.0["paths"][path][method.to_lowercase()];
        assert!(op.is_object(), "the document has no {method} {path}");
        op
    }

    /// Follows `$ref`s (local ones only) until a non-reference.
    pub fn resolve<'a>(&'a self, mut v: &'a Value) -> &'a Value {
        while let Some(r) = v.get("$ref").and_then(Value::as_str) {
            let pointer = r
                .strip_prefix('#')
                .unwrap_or_else(|| panic!("non-local $ref {r}"));
            v = self
                .0
                .pointer(pointer)
                .unwrap_or_else(|| panic!("$ref {r} does not resolve"));
        }
        v
    }

    /// The schema of the `status` answer of an operation, for its JSON content type.
    pub fn response_schema(&self, method: &str, path: &str, status: u16) -> &Value {
        let op = self.operation(method, path);
        let resp = op["responses"]
            .get(status.to_string())
            .unwrap_or_else(|| panic!("{method} {path} documents no {status} answer"));
        let resp = self.resolve(resp);
        let content = &resp["content"];
        let media = content
            .get("application/json")
            .or_else(|| content.get("application/problem+json"))
            .unwrap_or_else(|| panic!("{method} {path} {status}: no JSON content"));
        &media["schema"]
    }

    /// Panics (naming the operation and the place) unless `value` conforms to the documented
    /// answer.
    #[track_caller]
    pub fn check(&self, method: &str, path: &str, status: u16, value: &Value) {
        let schema = self.response_schema(method, path, status);
        if let Err(e) = self.conforms(value, schema, "$") {
            panic!("{method} {path} {status}: {e}\nvalue: {value:#}");
        }
    }

    pub fn conforms(&self, v: &Value, schema: &Value, at: &str) -> Result<(), String> {
        let schema = self.resolve(schema);
        if let Some(options) = schema.get("oneOf").and_then(Value::as_array) {
            let matching = options
                .iter()
                .filter(|s| self.conforms(v, s, at).is_ok())
                .count();
            return if matching == 1 {
                Ok(())
            } else {
                Err(format!("{at}: matches {matching} of oneOf"))
            };
        }
        if let Some(t) = schema.get("type") {
            let types: Vec<&str> = match t {
                Value::String(s) => vec![s.as_str()],
                Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
                _ => return Err(format!("{at}: bad type in schema")),
            };
            let ok = types.iter().any(|t| match *t {
                "object" => v.is_object(),
                "array" => v.is_array(),
                "string" => v.is_string(),
                "integer" => v.is_i64() || v.is_u64(),
                "number" => v.is_number(),
                "boolean" => v.is_boolean(),
                "null" => v.is_null(),
                _ => false,
            });
            if !ok {
                return Err(format!("{at}: {v} is not {types:?}"));
            }
        }
        if let Some(e) = schema.get("enum").and_then(Value::as_array) {
            if !e.contains(v) {
                return Err(format!("{at}: {v} not in {e:?}"));
            }
        }
        if let Some(n) = v.as_f64() {
            if schema
                .get("minimum")
                .and_then(Value::as_f64)
                .is_some_and(|m| n < m)
                || schema
                    .get("maximum")
                    .and_then(Value::as_f64)
                    .is_some_and(|m| n > m)
            {
                return Err(format!("{at}: {n} out of range"));
            }
        }
        if let Some(obj) = v.as_object() {
            let props = schema.get("properties").and_then(Value::as_object);
            for req in schema
                .get("required")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let req = req.as_str().unwrap();
                if !obj.contains_key(req) {
                    return Err(format!("{at}: missing required {req:?}"));
                }
            }
            for (k, child) in obj {
                let at = format!("{at}.{k}");
                match props.and_then(|p| p.get(k)) {
                    Some(s) => self.conforms(child, s, &at)?,
                    None => match schema.get("additionalProperties") {
                        Some(Value::Bool(false)) => return Err(format!("{at}: not in the schema")),
                        Some(s @ Value::Object(_)) => self.conforms(child, s, &at)?,
                        _ => {}
                    },
                }
            }
        }
        if let (Some(items), Some(arr)) = (schema.get("items"), v.as_array()) {
            for (i, child) in arr.iter().enumerate() {
                self.conforms(child, items, &format!("{at}[{i}]"))?;
            }
        }
        Ok(())
    }
}
