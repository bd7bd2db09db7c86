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
    use std::os::unix::io::AsRawFd;

    let fd = tty.as_raw_fd();
    let mut writer = &tty;
    writer.write_all(prompt.as_bytes())?;
    writer.flush()?;
    // SAFETY: termios is plain data; tcgetattr fills it for a valid open descriptor.
    let mut saved: libc::termios = unsafe { std::mem::zeroed() };
    let have_termios = unsafe { libc::tcgetattr(fd, &mut saved) } == 0;
    if have_termios {
        let mut quiet = saved;
        quiet.c_lflag &= !libc::ECHO;
        quiet.c_lflag |= libc::ECHONL;
        // SAFETY: fd is open and `quiet` is a valid termios copied from the terminal.
        unsafe { libc::tcsetattr(fd, libc::TCSANOW, &quiet) };
    }
    let mut line = String::new();
    let read = std::io::BufReader::new(&tty).read_line(&mut line);
    if have_termios {
        // SAFETY: restores the settings read above on the same descriptor.
        unsafe { libc::tcsetattr(fd, libc::TCSANOW, &saved) };
    }
    read.context("reading the password from the terminal")?;
    Ok(strip_line_ending(&line).to_string())
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
