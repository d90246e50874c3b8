//! Error responses that many routes share, each written once for the OpenAPI document: a route
//! lists the sets that apply to it (`responses((status = 200, ..), Keyed, Queued, ..)`) and
//! writes out only what is its own. A route's own row for a status a set also names must come
//! after the set: it replaces the set's row.
use std::collections::BTreeMap;

use utoipa::openapi::{ContentBuilder, Ref, RefOr, Response, ResponseBuilder};

/// One error response: `description`, with an [`ErrorBody`](super::error::ErrorBody) body.
fn error(description: &str) -> RefOr<Response> {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("ErrorBody")))
                .build(),
        )
        .build()
        .into()
}

/// Declares each set: a unit struct whose `IntoResponses` are its `status => description` rows.
macro_rules! sets {
    ($($(#[$doc:meta])* $name:ident { $($status:literal => $description:literal),+ $(,)? })*) => {$(
        $(#[$doc])*
        pub struct $name;

        impl utoipa::IntoResponses for $name {
            fn responses() -> BTreeMap<String, RefOr<Response>> {
                BTreeMap::from([$(($status.to_string(), error($description))),+])
            }
        }
    )*};
}

sets! {
    /// Every route but the probes and the document, once a tenants file is in force.
    Keyed { "401" => "Missing or unknown API key (tenants file in force)" }
    /// Routes that answer only while the server serves.
    Serving { "503" => "Loading or shutting down" }
    /// Writes to the prompts folder.
    Stored {
        "503" => "Loading, shutting down, or the folder is read-only",
        "507" => "The prompts folder's disk is full",
    }
    /// A JSON request body.
    JsonIn {
        "400" => "Malformed JSON",
        "415" => "Not application/json",
    }
    /// A body under --max-body-bytes.
    BodyLimit { "413" => "Body over --max-body-bytes" }
    /// Requests that queue for the engine.
    Queued {
        "429" => "Queue full, or the tenant's request rate / in-flight quota; retry after Retry-After",
        "503" => "Loading or shutting down",
        "504" => "Did not finish within --request-timeout-ms",
    }
    /// A served task the caller reads.
    TaskRead {
        "403" => "Another tenant's task",
        "404" => "Unknown task",
    }
    /// A tuning job the caller reads.
    JobRead {
        "403" => "Another tenant's job",
        "404" => "No such job",
    }
}
