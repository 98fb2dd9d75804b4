//! Errors of recipe lookup, overrides, files and resolution; each names the key or file and what was expected.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum RecipeError {
    #[error("unknown recipe {name:?}; one of: {valid}")]
    UnknownRecipe { name: String, valid: String },
    #[error("override {arg:?}: expected KEY=VALUE, e.g. trainer.max_steps=200")]
    Syntax { arg: String },
    #[error("unknown key {key:?}; valid keys here: {valid}")]
    UnknownKey { key: String, valid: String },
    #[error("{key}: {message}")]
    Value { key: String, message: String },
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("the recipe is invalid: {0}")]
    Invalid(String),
    /// A resume whose trajectory settings differ from the checkpoint's recipe.
    #[error("{0}")]
    Resume(String),
    #[error("{0}")]
    Launch(String),
    // `error`, not `source`: the message holds its text already (anyhow's `{:#}` would print a source twice).
    #[error("{path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
}

pub type Result<T, E = RecipeError> = std::result::Result<T, E>;

pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> RecipeError {
    let path = path.into();
    move |error| RecipeError::Io { path, error }
}
