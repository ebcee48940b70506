//! Types the binary encoding writes but cannot read back are caught where they are sent,
//! with the way out; `shoal::Json<T>` sends them as JSON.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use shoal::{GetError, Json, TaskError};

/// Untagged: reading it back needs a self-describing format.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Loose {
    Number(u64),
    Text(String),
}

#[shoal::remote]
fn size(v: Value) -> usize {
    v.to_string().len()
}

#[shoal::remote]
fn loosen(n: u64) -> Loose {
    Loose::Number(n)
}

#[shoal::remote]
fn key_names(doc: Json<Value>) -> Json<Vec<String>> {
    let keys = doc.as_object().map(|o| o.keys().cloned().collect());
    Json(keys.unwrap_or_default())
}

#[shoal::remote]
fn tighten(v: Json<Loose>) -> Json<Loose> {
    match v.0 {
        Loose::Number(n) => Json(Loose::Text(n.to_string())),
        other => Json(other),
    }
}

#[test]
fn an_argument_that_does_not_read_back_fails_when_sent_naming_its_type() {
    shoal::init().unwrap();
    match size.remote(json!({"a": 1})).get_blocking() {
        Err(GetError::Task(TaskError::ArgDecode { index: 0, message })) => {
            assert!(message.contains("`serde_json::value::Value`"), "{message}");
            assert!(message.contains("shoal::Json<"), "{message}");
        }
        other => panic!("expected a refusal when sent, got {other:?}"),
    }
}

#[test]
fn a_result_that_does_not_read_back_fails_in_the_task_naming_its_type() {
    shoal::init().unwrap();
    match loosen.remote(3).get_blocking() {
        Err(GetError::Task(TaskError::ResultStore { message })) => {
            assert!(message.contains("codec::Loose"), "{message}");
            assert!(message.contains("shoal::Json<"), "{message}");
        }
        other => panic!("expected the task to fail, got {other:?}"),
    }
}

#[test]
fn json_carries_them_there_and_back() {
    shoal::init().unwrap();
    let doc = json!({"b": [true, null], "a": {"c": 1.5}});
    let Json(keys) = key_names.remote(Json(doc)).get_blocking().unwrap();
    assert_eq!(keys, vec!["a".to_string(), "b".to_string()]);
    let Json(back) = tighten
        .remote(Json(Loose::Number(7)))
        .get_blocking()
        .unwrap();
    assert_eq!(back, Loose::Text("7".into()));
    // A ref inside travels as a ref: its value is read in the task.
    let inner = shoal::put(&41u64).unwrap();
    let r = carry.remote(Json(vec![inner]));
    assert_eq!(r.get_blocking().unwrap(), 42);
}

#[shoal::remote]
fn carry(refs: Json<Vec<shoal::ObjectRef<u64>>>) -> u64 {
    refs[0].get_blocking().unwrap() + 1
}
