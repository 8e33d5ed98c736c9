//! Base45 (RFC 9285): bytes as text in QR's alphanumeric alphabet, two bytes to three
//! characters. Decoding refuses characters outside the alphabet, values out of range and a
//! dangling character.

const ALPHABET: &[u8; 45] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ $%*+-./:";

/// Encodes `bytes`.
pub fn encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(2) * 3);
    for pair in bytes.chunks(2) {
        let (mut value, digits) = match pair {
            [a, b] => (usize::from(*a) * 256 + usize::from(*b), 3),
            [a] => (usize::from(*a), 2),
            _ => continue,
        };
        for _ in 0..digits {
            out.push(char::from(ALPHABET[value % 45]));
            value /= 45;
        }
    }
    out
}

/// Decodes base45 text.
pub fn decode(text: &str) -> Result<Vec<u8>, String> {
    let digits: Vec<usize> = text
        .bytes()
        .map(|c| {
            ALPHABET
                .iter()
                .position(|&a| a == c)
                .ok_or_else(|| format!("character {:?} is not base45", char::from(c)))
        })
        .collect::<Result<_, _>>()?;
    let mut out = Vec::with_capacity(digits.len() / 3 * 2 + 1);
    for group in digits.chunks(3) {
        match group {
            [c, d, e] => {
                let value = c + d * 45 + e * 45 * 45;
                let high = u8::try_from(value / 256).map_err(|_| "value out of range")?;
                out.push(high);
                out.push((value % 256) as u8);
            }
            [c, d] => {
                let value = c + d * 45;
                out.push(u8::try_from(value).map_err(|_| "value out of range")?);
            }
            _ => return Err("dangling character".into()),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc_9285_examples() {
        assert_eq!(encode(b"AB"), "BB8");
        assert_eq!(encode(b"Hello!!"), "%69 VD92EX0");
        assert_eq!(encode(b"base-45"), "UJCLQE7W581");
        assert_eq!(decode("QED8WEX0").unwrap(), b"ietf!");
        assert!(decode("GGW").is_err());
        assert!(decode("ab").is_err());
        assert!(decode("A").is_err());
    }

    #[test]
    fn round_trips_every_byte() {
        let bytes: Vec<u8> = (0..=255u8).chain((0..=255u8).rev()).chain([7]).collect();
        assert_eq!(decode(&encode(&bytes)).unwrap(), bytes);
    }
}
