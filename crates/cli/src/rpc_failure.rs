//! How every command reports a failed call: the status code and the server's message (which
//! names the field of a refused request), and the exit code — 2 when the request was refused as
//! invalid, as for any other bad input, 1 for everything else.

use std::process::ExitCode;

use tta_runtime::service::{EXIT_CONFIG, EXIT_FAILURE};

/// The exit code for a call that ended with `code`.
fn exit_code(code: tonic::Code) -> u8 {
    if code == tonic::Code::InvalidArgument {
        EXIT_CONFIG
    } else {
        EXIT_FAILURE
    }
}

/// Prints `status` after `context` (what was being done, possibly empty) and picks the exit
/// code.
pub fn report(context: &str, status: &tonic::Status) -> ExitCode {
    eprintln!("tta: {context}{:?}: {}", status.code(), status.message());
    ExitCode::from(exit_code(status.code()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_request_is_bad_input_and_anything_else_a_failure() {
        assert_eq!(exit_code(tonic::Code::InvalidArgument), 2);
        for code in [
            tonic::Code::Unavailable,
            tonic::Code::NotFound,
            tonic::Code::Aborted,
            tonic::Code::Internal,
        ] {
            assert_eq!(exit_code(code), 1, "{code:?}");
        }
    }
}
