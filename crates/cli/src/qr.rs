//! Showing a TOTP device to the user: its `otpauth://` URI alone on a line (for scripts and
//! for copying), and on a terminal a QR code of it for authenticator apps.

use std::io::IsTerminal;

use qrcode::render::unicode::Dense1x2;
use qrcode::QrCode;

/// Prints the URI on its own line, then a QR code when stdout is a terminal.
pub fn print_otpauth(uri: &str) {
    println!("{uri}");
    if !std::io::stdout().is_terminal() {
        return;
    }
    match QrCode::new(uri.as_bytes()) {
        Ok(code) => {
            // Block characters take the terminal's text colour: drawing the light modules as
            // blocks shows dark modules on light ones on the usual light-on-dark terminal.
            let image = code
                .render::<Dense1x2>()
                .dark_color(Dense1x2::Light)
                .light_color(Dense1x2::Dark)
                .quiet_zone(true)
                .build();
            println!("{image}");
        }
        Err(err) => eprintln!("warning: cannot draw a QR code of the URI: {err}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_otpauth_uri_fits_in_a_qr_code() {
        let uri = "otpauth://totp/dbward%20prod:alice?secret=MZXW6YTBOIMZXW6YTBOIMZXW6YTBOIMZ&issuer=dbward%20prod&algorithm=SHA1&digits=6&period=30";
        let text = QrCode::new(uri.as_bytes())
            .expect("a QR code")
            .render::<Dense1x2>()
            .build();
        assert!(text.lines().count() > 10);
    }
}
