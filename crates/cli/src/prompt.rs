//! Reading passwords: from stdin (`--password-stdin`) or typed at the terminal without echo.

use std::io::{BufRead, Read, Write};

use anyhow::{bail, Context, Result};

/// All of stdin, without the final line ending.
pub fn password_from_stdin() -> Result<String> {
    let mut text = String::new();
    std::io::stdin()
        .read_to_string(&mut text)
        .context("reading the password from stdin")?;
    let password = strip_line_ending(&text).to_string();
    if password.is_empty() {
        bail!("empty password on stdin");
    }
    Ok(password)
}

fn strip_line_ending(s: &str) -> &str {
    s.strip_suffix('\n')
        .map(|s| s.strip_suffix('\r').unwrap_or(s))
        .unwrap_or(s)
}

/// Asks on the terminal with echo off; without a terminal, reads one line from stdin.
pub fn prompt_password(prompt: &str) -> Result<String> {
    #[cfg(unix)]
    if let Ok(tty) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")
    {
        return read_from_tty(tty, prompt);
    }
    eprint!("{prompt}");
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("reading the password")?;
    Ok(strip_line_ending(&line).to_string())
}

#[cfg(unix)]
fn read_from_tty(tty: std::fs::File, prompt: &str) -> Result<String> {
    use nix::sys::termios::{tcgetattr, tcsetattr, LocalFlags, SetArg};

    let mut writer = &tty;
    writer.write_all(prompt.as_bytes())?;
    writer.flush()?;
    let saved = tcgetattr(&tty).ok();
    if let Some(saved) = &saved {
        let mut quiet = saved.clone();
        quiet.local_flags.remove(LocalFlags::ECHO);
        quiet.local_flags.insert(LocalFlags::ECHONL);
        let _ = tcsetattr(&tty, SetArg::TCSANOW, &quiet);
    }
    let mut line = String::new();
    let read = std::io::BufReader::new(&tty).read_line(&mut line);
    if let Some(saved) = &saved {
        let _ = tcsetattr(&tty, SetArg::TCSANOW, saved);
    }
    read.context("reading the password from the terminal")?;
    Ok(strip_line_ending(&line).to_string())
}

/// Whether a one-time code may be asked for: stdin is a terminal (scripts pass `--otp`).
pub fn can_prompt_code() -> bool {
    use std::io::IsTerminal;
    std::io::stdin().is_terminal()
}

/// Asks for a one-time code on the terminal (echoed: it is useless once used).
pub fn prompt_code(prompt: &str) -> Result<String> {
    eprint!("{prompt}");
    std::io::stderr().flush()?;
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("reading the one-time code")?;
    let code = line.trim().to_string();
    if code.is_empty() {
        bail!("no one-time code given");
    }
    Ok(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_final_line_ending_is_removed() {
        assert_eq!(strip_line_ending("secret\n"), "secret");
        assert_eq!(strip_line_ending("secret\r\n"), "secret");
        assert_eq!(strip_line_ending("sec ret "), "sec ret ");
        assert_eq!(strip_line_ending("a\n\n"), "a\n");
    }
}
