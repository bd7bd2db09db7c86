//! `dbward`: the one binary of dbward. Parses the command line, calls the gateway (in process
//! for `start`, over its HTTPS API for everything else) and prints the answers.
//!
//! Business logic lives in `dbward-server` and the libraries; this crate only translates
//! between the user and them.

mod args;
mod client;
mod commands;
mod dbconfig;
mod home;
mod prompt;
mod qr;
mod sso;
mod table;

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = args::Cli::parse();
    let serves = matches!(
        cli.command,
        args::Command::Start | args::Command::Quickstart { .. } | args::Command::Proxy(_)
    );
    if !serves {
        // Printing commands behave like other command-line tools when their output is cut
        // short (`dbward audit search | head`): they end quietly instead of reporting a
        // broken pipe. Commands that serve connections keep SIGPIPE ignored, so a peer that
        // goes away only fails its own socket.
        // SAFETY: called before any other thread exists; restores the default disposition,
        // which runs no handler code.
        #[allow(unsafe_code)]
        unsafe {
            let _ = nix::sys::signal::signal(
                nix::sys::signal::Signal::SIGPIPE,
                nix::sys::signal::SigHandler::SigDfl,
            );
        }
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(commands::run(cli)) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {}", error_text(&err));
            std::process::ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, without repeating a cause already in the message.
fn error_text(err: &anyhow::Error) -> String {
    let mut text = err.to_string();
    for cause in err.chain().skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
    }
    text
}
