//! The OpenAPI 3.1 document of the REST API, `GET /openapi.json`. It is built from the same
//! field table validation uses (`cra_model::input::NUMBER_FIELDS`, `category_fields`), so the
//! ranges, types and required fields it states are the ones the server applies.
use std::sync::OnceLock;

use axum::{http::header, response::IntoResponse};
use serde_json::{json, Map, Value};

use cra_model::input::{category_fields, MAX_APPLICATION_ID_BYTES, NUMBER_FIELDS};

/// The schema of one application, as `/predict` accepts it.
pub fn application_schema() -> Value {
    let mut props = Map::new();
    let mut required = Vec::new();
    props.insert(
        "application_id".into(),
        json!({
            "type": ["string", "null"],
            "maxLength": MAX_APPLICATION_ID_BYTES,
            "description": "The lender's id of the application (optional); at most 256 bytes of \
                            UTF-8. Routes the application to the same model every time under A/B.",
        }),
    );
    for f in NUMBER_FIELDS {
        let mut s = Map::new();
        let t = if f.integer { "integer" } else { "number" };
        s.insert(
            "type".into(),
            if f.required {
                json!(t)
            } else {
                json!([t, "null"])
            },
        );
        if f.min_exclusive {
            s.insert("exclusiveMinimum".into(), json!(f.min));
        } else {
            s.insert("minimum".into(), json!(f.min));
        }
        s.insert("maximum".into(), json!(f.max));
        if !f.required {
            s.insert(
                "description".into(),
                json!("A credit-bureau field: null or absent for an applicant without a bureau file (scored as missing)."),
            );
        }
        props.insert(f.name.into(), Value::Object(s));
        if f.required {
            required.push(f.name);
        }
    }
    for (name, values) in category_fields() {
        props.insert(name.into(), json!({"type": "string", "enum": values}));
        required.push(name);
    }
    json!({
        "type": "object",
        "properties": props,
        "required": required,
        "additionalProperties": false,
    })
}

fn document_value() -> Value {
    let error = json!({
        "description": "Error",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    });
    let retry = json!({
        "description": "Overloaded: retry after the Retry-After header's seconds",
        "headers": {"Retry-After": {"schema": {"type": "integer"}}},
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    });
    let unavailable = json!({
        "description": "The decision could not be recorded (or the server is not ready): nothing was decided; retry later",
        "headers": {"Retry-After": {"schema": {"type": "integer"}}},
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    });
    let explain = json!({
        "name": "explain", "in": "query", "required": false,
        "schema": {"type": "boolean", "default": false},
        "description": "Also return every feature's contribution (TreeSHAP, log-odds), not only the reasons.",
    });
    let request_id = json!({
        "name": "x-request-id", "in": "header", "required": false,
        "schema": {"type": "string", "maxLength": 128},
        "description": "Echoed in the response and recorded with the decision; generated when absent.",
    });
    let prediction_props = json!({
        "prediction": {"type": "integer", "enum": [0, 1], "description": "1: predicted to default (declined)."},
        "risk_score": {"type": "number", "minimum": 0, "maximum": 100, "description": "probability_default × 100, to 2 decimals."},
        "risk_level": {"type": "string", "enum": ["low", "medium", "high"]},
        "probability": {
            "type": "object",
            "properties": {"low_risk": {"type": "number"}, "high_risk": {"type": "number"}},
            "required": ["low_risk", "high_risk"],
        },
        "probability_default": {"type": "number", "description": "The probability of default at full precision (the same value gRPC returns)."},
        "application_id": {"type": "string"},
        "decision_id": {"type": "string", "format": "uuid", "description": "The decision log's id (absent when the log is off)."},
        "model_version": {"type": "string"},
        "model_role": {"type": "string", "enum": ["champion", "challenger", "shadow"]},
        "reasons": {"type": "array", "items": {"$ref": "#/components/schemas/Reason"}, "description": "Adverse-action reasons: on explained decisions (by default every decline)."},
        "explanation": {"$ref": "#/components/schemas/Explanation"},
    });
    let prediction_required = json!([
        "prediction",
        "risk_score",
        "risk_level",
        "probability",
        "probability_default",
        "model_version",
        "model_role"
    ]);
    let mut predict_props = prediction_props.as_object().cloned().unwrap_or_default();
    predict_props.insert("status".into(), json!({"const": "success"}));
    predict_props.insert("processing_time_ms".into(), json!({"type": "number"}));
    predict_props.insert(
        "timestamp".into(),
        json!({"type": "number", "description": "Seconds since the epoch."}),
    );
    predict_props.insert("request_id".into(), json!({"type": "string"}));
    let mut predict_required = prediction_required.as_array().cloned().unwrap_or_default();
    for k in ["status", "processing_time_ms", "timestamp", "request_id"] {
        predict_required.push(json!(k));
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "CRA credit-risk scoring: REST API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "The original Flask service's API, served by CRA's scoring core: the same decisions, validation and decision log as gRPC. Every bad field is named in `violations`; in a batch, a field's path starts with the item's index (`applications[3].age`).",
        },
        "paths": {
            "/predict": {
                "post": {
                    "summary": "Score one application",
                    "operationId": "predict",
                    "parameters": [explain, request_id],
                    "requestBody": {
                        "required": true,
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Application"}}},
                    },
                    "responses": {
                        "200": {"description": "Scored", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/PredictResponse"}}}},
                        "400": error, "413": error, "415": error, "429": retry, "503": unavailable, "504": error,
                    },
                }
            },
            "/predict/batch": {
                "post": {
                    "summary": "Score a batch of applications, all or nothing",
                    "operationId": "predictBatch",
                    "parameters": [explain, request_id],
                    "requestBody": {
                        "required": true,
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/BatchRequest"}}},
                    },
                    "responses": {
                        "200": {"description": "Every application scored, in order", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/BatchResponse"}}}},
                        "400": error, "413": error, "415": error, "429": retry, "503": unavailable, "504": error,
                    },
                }
            },
            "/health": {
                "get": {
                    "summary": "Readiness: 200 when the server can score and record decisions",
                    "operationId": "health",
                    "responses": {
                        "200": {"description": "Ready", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Health"}}}},
                        "503": {"description": "Not ready (starting, shutting down, or the decision log cannot record)", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Health"}}}},
                    },
                }
            },
            "/openapi.json": {
                "get": {
                    "summary": "This document",
                    "operationId": "openapi",
                    "responses": {"200": {"description": "The OpenAPI document", "content": {"application/json": {"schema": {"type": "object"}}}}},
                }
            },
        },
        "components": {
            "schemas": {
                "Application": application_schema(),
                "BatchRequest": {
                    "type": "object",
                    "properties": {"applications": {"type": "array", "minItems": 1, "items": {"$ref": "#/components/schemas/Application"}}},
                    "required": ["applications"],
                    "additionalProperties": false,
                },
                "Prediction": {"type": "object", "properties": prediction_props, "required": prediction_required},
                "PredictResponse": {"type": "object", "properties": predict_props, "required": predict_required},
                "BatchResponse": {
                    "type": "object",
                    "properties": {
                        "status": {"const": "success"},
                        "count": {"type": "integer"},
                        "predictions": {"type": "array", "items": {"$ref": "#/components/schemas/Prediction"}},
                        "processing_time_ms": {"type": "number"},
                        "timestamp": {"type": "number"},
                        "request_id": {"type": "string"},
                    },
                    "required": ["status", "count", "predictions", "processing_time_ms", "timestamp", "request_id"],
                },
                "Reason": {
                    "type": "object",
                    "properties": {
                        "code": {"type": "string"},
                        "description": {"type": "string"},
                        "features": {"type": "array", "items": {"type": "string"}},
                        "contribution": {"type": "number", "description": "Log-odds pushed toward default."},
                        "fifth_factor": {"type": "boolean", "description": "Inquiries given as the fifth key factor."},
                    },
                    "required": ["code", "description", "features", "contribution", "fifth_factor"],
                },
                "Explanation": {
                    "type": "object",
                    "properties": {
                        "base_margin": {"type": "number"},
                        "contributions": {"type": "array", "items": {
                            "type": "object",
                            "properties": {
                                "feature": {"type": "string"},
                                "value": {"type": ["number", "string", "null"]},
                                "contribution": {"type": "number"},
                            },
                            "required": ["feature", "value", "contribution"],
                        }},
                        "reasons": {"type": "array", "items": {"$ref": "#/components/schemas/Reason"}},
                    },
                    "required": ["base_margin", "contributions", "reasons"],
                },
                "Health": {
                    "type": "object",
                    "properties": {
                        "status": {"type": "string", "enum": ["healthy", "unhealthy"]},
                        "model_loaded": {"type": "boolean"},
                        "timestamp": {"type": "number"},
                        "model_version": {"type": "string"},
                    },
                    "required": ["status", "model_loaded", "timestamp"],
                },
                "Error": {
                    "type": "object",
                    "properties": {
                        "status": {"const": "error"},
                        "error": {"type": "string"},
                        "violations": {"type": "array", "items": {
                            "type": "object",
                            "properties": {"field": {"type": "string"}, "description": {"type": "string"}},
                            "required": ["field", "description"],
                        }},
                        "timestamp": {"type": "number"},
                    },
                    "required": ["status", "error", "violations"],
                },
            }
        }
    })
}

/// The document, built once.
pub fn document_json() -> &'static str {
    static DOC: OnceLock<String> = OnceLock::new();
    DOC.get_or_init(|| {
        serde_json::to_string_pretty(&document_value()).unwrap_or_else(|_| "{}".into())
    })
}

/// `GET /openapi.json`.
pub async fn document() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        document_json(),
    )
}
