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
    #[error("{0}")]
    Launch(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

pub type Result<T, E = RecipeError> = std::result::Result<T, E>;

pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> RecipeError {
    let path = path.into();
    move |source| RecipeError::Io { path, source }
}
