//! Storage quantities as the API server writes them (canonical form: `10Gi`, `500M`, bytes).

/// Bytes in a quantity: an integer with an optional binary or decimal suffix, as the guest
/// SDK reads a driver's size option (one parser for both). A fraction or an exponent is
/// refused rather than rounded: the API server canonicalises sizes to whole units.
pub fn bytes(text: &str) -> Result<u64, String> {
    flex_sdk::parse_quantity(text).map_err(|_| format!("cannot read the size {text:?}"))
}

/// A byte count in the largest binary unit that divides it (`1Gi`, `1536Mi`, `1000`).
pub fn format(bytes: u64) -> String {
    for (shift, suffix) in [(50, "Pi"), (40, "Ti"), (30, "Gi"), (20, "Mi"), (10, "Ki")] {
        if bytes != 0 && bytes.trailing_zeros() >= shift {
            return format!("{}{suffix}", bytes >> shift);
        }
    }
    bytes.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_canonical_quantities() {
        assert_eq!(bytes("1Gi"), Ok(1 << 30));
        assert_eq!(bytes("500M"), Ok(500_000_000));
        assert_eq!(bytes("1048576"), Ok(1 << 20));
        for bad in ["", "0", "1.5Gi", "1e9", "Gi", "-1", "10X", "99999999999Ti"] {
            assert!(bytes(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn formats_in_the_largest_exact_unit() {
        assert_eq!(format(1 << 30), "1Gi");
        assert_eq!(format(1536 << 20), "1536Mi");
        assert_eq!(format(1000), "1000");
        assert_eq!(format(0), "0");
        for n in [1u64 << 20, 3 << 30, 12345, 7 << 10] {
            assert_eq!(bytes(&format(n)), Ok(n));
        }
    }
}
