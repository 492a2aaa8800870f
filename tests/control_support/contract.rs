//! Checks responses against `docs/openapi.yaml`: the path and method are documented, the
//! status is one of the operation's responses, and a JSON body fits the response's schema
//! (types, required properties, `additionalProperties`, enums, `nullable`, `oneOf`, `allOf`,
//! `maxLength`, `$ref`). Also records which operations were exercised.

use std::collections::BTreeSet;
use std::sync::Mutex;

use serde_json::Value;

use super::Resp;

/// The API description.
pub struct Contract {
    doc: Value,
    seen: Mutex<BTreeSet<(String, String)>>,
}

fn is_template_match(template: &str, path: &str) -> bool {
    let t: Vec<&str> = template.trim_end_matches('/').split('/').collect();
    let p: Vec<&str> = path.trim_end_matches('/').split('/').collect();
    t.len() == p.len()
        && t.iter().zip(&p).all(|(a, b)| (a.starts_with('{') && a.ends_with('}') && !b.is_empty()) || a == b)
}

impl Contract {
    /// Loads `docs/openapi.yaml`.
    pub fn load() -> Contract {
        let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.yaml"))
            .expect("read openapi");
        let doc: Value = serde_yaml_ng::from_str(&text).expect("docs/openapi.yaml is valid YAML");
        assert_eq!(doc["openapi"].as_str().map(|v| &v[..2]), Some("3."), "OpenAPI 3");
        Contract { doc, seen: Mutex::new(BTreeSet::new()) }
    }

    /// Every documented (method, path template).
    pub fn operations(&self) -> BTreeSet<(String, String)> {
        let mut out = BTreeSet::new();
        if let Some(paths) = self.doc["paths"].as_object() {
            for (p, item) in paths {
                for m in ["get", "post", "patch", "delete", "put"] {
                    if item.get(m).is_some() {
                        out.insert((m.to_uppercase(), p.clone()));
                    }
                }
            }
        }
        out
    }

    /// Operations exercised so far.
    pub fn seen(&self) -> BTreeSet<(String, String)> {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }

    fn resolve<'a>(&'a self, v: &'a Value) -> &'a Value {
        let mut v = v;
        for _ in 0..16 {
            let Some(r) = v.get("$ref").and_then(Value::as_str) else { return v };
            let mut cur = &self.doc;
            for part in r.trim_start_matches("#/").split('/') {
                cur = &cur[part];
            }
            assert!(!cur.is_null(), "dangling $ref {r}");
            v = cur;
        }
        v
    }

    /// Checks one exchange; panics with what does not fit.
    pub fn check(&self, method: &str, path: &str, r: &Resp) {
        let path = path.split('?').next().unwrap_or(path);
        let paths = self.doc["paths"].as_object().expect("paths");
        let (template, item) = paths
            .iter()
            .find(|(t, _)| *t == path)
            .or_else(|| paths.iter().find(|(t, _)| is_template_match(t, path)))
            .unwrap_or_else(|| panic!("{method} {path}: path not in docs/openapi.yaml"));
        let m = if method == "HEAD" { "get" } else { &method.to_lowercase() };
        let Some(op) = item.get(m) else {
            // A method the path does not have: 405 naming the ones it has (docs/api.md).
            assert_eq!(
                r.status, 405,
                "{method} {template}: method not documented, yet answered {}",
                r.status
            );
            let allow = r.header("allow").unwrap_or_else(|| panic!("{method} {template}: 405 without Allow"));
            for a in allow.split(", ") {
                let a = if a == "HEAD" { "get".to_string() } else { a.to_lowercase() };
                assert!(item.get(&a).is_some(), "{template}: Allow names {a}, which is not documented");
            }
            return;
        };
        if let Ok(mut s) = self.seen.lock() {
            s.insert((method.to_string(), template.clone()));
        }
        let resp = op["responses"]
            .get(r.status.to_string())
            .unwrap_or_else(|| panic!("{method} {path}: status {} not documented ({})", r.status, r.text()));
        let resp = self.resolve(resp);
        let ctype = r.header("content-type").unwrap_or("").split(';').next().unwrap_or("").trim().to_string();
        let Some(content) = resp.get("content").and_then(Value::as_object) else {
            return;
        };
        let media = content.get(&ctype).unwrap_or_else(|| {
            panic!(
                "{method} {path} {}: content type {ctype:?} not documented ({:?})",
                r.status,
                content.keys()
            )
        });
        if ctype == "application/json" && method != "HEAD" {
            let body: Value = serde_json::from_slice(&r.body)
                .unwrap_or_else(|e| panic!("{method} {path}: body is not JSON ({e}): {}", r.text()));
            if let Err(e) = self.validate(&media["schema"], &body, "$") {
                panic!("{method} {path} {}: {e}\nbody: {body}", r.status);
            }
        }
    }

    /// Validates `v` against `schema`.
    pub fn validate(&self, schema: &Value, v: &Value, at: &str) -> Result<(), String> {
        let s = self.resolve(schema);
        if v.is_null() {
            return if s.get("nullable").and_then(Value::as_bool) == Some(true) {
                Ok(())
            } else {
                Err(format!("{at}: null where the schema is not nullable"))
            };
        }
        if let Some(all) = s.get("allOf").and_then(Value::as_array) {
            for sub in all {
                self.validate(sub, v, at)?;
            }
        }
        if let Some(any) = s.get("oneOf").and_then(Value::as_array) {
            let ok = any.iter().filter(|sub| self.validate(sub, v, at).is_ok()).count();
            if ok != 1 {
                return Err(format!("{at}: {ok} of the oneOf alternatives match {v}"));
            }
        }
        if let Some(e) = s.get("enum").and_then(Value::as_array) {
            if !e.contains(v) {
                return Err(format!("{at}: {v} is not one of {e:?}"));
            }
        }
        match s.get("type").and_then(Value::as_str) {
            None => {}
            Some("object") => {
                let o = v.as_object().ok_or_else(|| format!("{at}: expected an object, got {v}"))?;
                if let Some(req) = s.get("required").and_then(Value::as_array) {
                    for k in req.iter().filter_map(Value::as_str) {
                        if !o.contains_key(k) {
                            return Err(format!("{at}: required property {k} missing"));
                        }
                    }
                }
                let props = s.get("properties").and_then(Value::as_object);
                for (k, val) in o {
                    match props.and_then(|p| p.get(k)) {
                        Some(ps) => self.validate(ps, val, &format!("{at}.{k}"))?,
                        None => match s.get("additionalProperties") {
                            Some(Value::Bool(false)) => {
                                return Err(format!("{at}: property {k} not in the schema"));
                            }
                            Some(extra @ Value::Object(_)) => {
                                self.validate(extra, val, &format!("{at}.{k}"))?
                            }
                            _ => {
                                if props.is_some() {
                                    return Err(format!("{at}: property {k} is not documented"));
                                }
                            }
                        },
                    }
                }
            }
            Some("array") => {
                let a = v.as_array().ok_or_else(|| format!("{at}: expected an array, got {v}"))?;
                if let Some(items) = s.get("items") {
                    for (i, x) in a.iter().enumerate() {
                        self.validate(items, x, &format!("{at}[{i}]"))?;
                    }
                }
            }
            Some("string") => {
                let t = v.as_str().ok_or_else(|| format!("{at}: expected a string, got {v}"))?;
                if let Some(max) = s.get("maxLength").and_then(Value::as_u64) {
                    if t.len() as u64 > max {
                        return Err(format!("{at}: longer than {max}"));
                    }
                }
            }
            Some("integer") if !(v.is_i64() || v.is_u64()) => {
                return Err(format!("{at}: expected an integer, got {v}"));
            }
            Some("number") if !v.is_number() => return Err(format!("{at}: expected a number, got {v}")),
            Some("boolean") if !v.is_boolean() => return Err(format!("{at}: expected a boolean, got {v}")),
            Some("integer" | "number" | "boolean") => {}
            Some(t) => return Err(format!("{at}: unknown schema type {t}")),
        }
        Ok(())
    }
}
