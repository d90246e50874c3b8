//! Path parameters as the OpenAPI document describes them (the routes read them with `Path`).
/// The naming rule of tasks and ensembles ([`crate::prompts::TaskName::parse`]) as a pattern.
pub const NAME_PATTERN: &str = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$";

/// The `{task}` path parameter.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)]
pub struct TaskParam {
    /// Task name: a letter or digit, then letters, digits, `.`, `_` or `-`; at most 128 bytes.
    #[param(pattern = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")]
    task: String,
}

/// The `{task}` and `{version}` path parameters.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)]
pub struct TaskVersionParams {
    /// Task name: a letter or digit, then letters, digits, `.`, `_` or `-`; at most 128 bytes.
    #[param(pattern = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")]
    task: String,
    /// Prompt version (only the served one exists).
    version: String,
}
