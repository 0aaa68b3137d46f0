//! Flag parsers shared by several subcommands (`--encryption on|off`, `--listen ADDR`).

use std::net::SocketAddr;

use left::app::peer_setup::literal_addr;

/// Parses `on|off|yes|no|true|false`.
pub(crate) fn parse_on_off(s: &str) -> Result<bool, String> {
    match s.to_ascii_lowercase().as_str() {
        "on" | "yes" | "true" | "1" => Ok(true),
        "off" | "no" | "false" | "0" => Ok(false),
        _ => Err(format!("expected on or off (or yes/no), not {s:?}")),
    }
}

/// Parses a listen address: `IP:PORT`, `[IPv6]:PORT`, an IP alone (default port) or a bare port
/// (on 0.0.0.0).
pub(crate) fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    let s = s.trim();
    if let Some(a) = literal_addr(s) {
        return Ok(a);
    }
    if let Ok(port) = s.parse::<u16>() {
        return Ok(SocketAddr::from(([0, 0, 0, 0], port)));
    }
    Err(format!(
        "{s:?} is not a listen address (use IP:PORT, [IPv6]:PORT, an IP, or a port)"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses_parse() {
        assert_eq!(
            parse_listen("127.0.0.1:0").unwrap(),
            "127.0.0.1:0".parse().unwrap()
        );
        assert_eq!(
            parse_listen("[::]:22001").unwrap(),
            "[::]:22001".parse().unwrap()
        );
        assert_eq!(
            parse_listen("23000").unwrap(),
            "0.0.0.0:23000".parse().unwrap()
        );
        assert_eq!(parse_listen("::1").unwrap(), "[::1]:22001".parse().unwrap());
        assert_eq!(
            parse_listen("[::1]").unwrap(),
            "[::1]:22001".parse().unwrap()
        );
        assert!(parse_listen("nonsense").is_err());
        assert!(parse_listen("1.2.3.4:99999").is_err());
    }

    #[test]
    fn on_off_accepts_the_seed_words() {
        for (s, v) in [("on", true), ("YES", true), ("off", false), ("no", false)] {
            assert_eq!(parse_on_off(s).unwrap(), v);
        }
        assert!(parse_on_off("maybe").is_err());
    }
}
