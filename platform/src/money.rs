//! Money is integer minor units plus an ISO 4217 currency. Never floats.

use ordermesh_contracts::types::Money;

use crate::status::Violations;

/// The largest amount accepted in one request (10^12 minor units).
pub const MAX_AMOUNT_MINOR: i64 = 1_000_000_000_000;

/// Active ISO 4217 alphabetic codes of currencies with a minor unit this mesh handles.
const ISO_4217: &[&str] = &[
    "AED", "ARS", "AUD", "BGN", "BHD", "BRL", "CAD", "CHF", "CLP", "CNY", "COP", "CZK", "DKK",
    "EGP", "EUR", "GBP", "HKD", "HUF", "IDR", "ILS", "INR", "ISK", "JPY", "KES", "KRW", "KWD",
    "MAD", "MXN", "MYR", "NGN", "NOK", "NZD", "PEN", "PHP", "PKR", "PLN", "QAR", "RON", "RSD",
    "SAR", "SEK", "SGD", "THB", "TRY", "TWD", "UAH", "USD", "VND", "ZAR",
];

pub fn is_known_currency(code: &str) -> bool {
    ISO_4217.contains(&code)
}

/// Checks a currency code, adding a violation for `field` when it is not one we know.
pub fn check_currency(v: &mut Violations, field: &str, code: &str) -> bool {
    if code.is_empty() {
        v.add(field, "is required");
        false
    } else if !is_known_currency(code) {
        v.add(
            field,
            format!("{code:.8} is not a supported ISO 4217 currency code"),
        );
        false
    } else {
        true
    }
}

/// Checks an amount that must be strictly positive and within bounds.
pub fn check_positive(
    v: &mut Violations,
    field: &str,
    money: Option<&Money>,
) -> Option<(String, i64)> {
    let Some(m) = money else {
        v.add(field, "is required");
        return None;
    };
    let currency_ok = check_currency(v, &format!("{field}.currency"), &m.currency);
    let amount_field = format!("{field}.amount_minor");
    if m.amount_minor <= 0 {
        v.add(&amount_field, "must be positive");
        return None;
    }
    if m.amount_minor > MAX_AMOUNT_MINOR {
        v.add(&amount_field, format!("must be at most {MAX_AMOUNT_MINOR}"));
        return None;
    }
    currency_ok.then(|| (m.currency.clone(), m.amount_minor))
}

pub fn money(currency: &str, amount_minor: i64) -> Money {
    Money {
        currency: currency.to_string(),
        amount_minor,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_and_currencies() {
        let mut v = Violations::new();
        assert_eq!(
            check_positive(&mut v, "amount", Some(&money("EUR", 1250))),
            Some(("EUR".into(), 1250))
        );
        assert!(v.is_empty());
        for bad in [
            money("EUR", 0),
            money("EUR", -5),
            money("XXX", 5),
            money("eur", 5),
            money("EUR", MAX_AMOUNT_MINOR + 1),
        ] {
            let mut v = Violations::new();
            assert_eq!(
                check_positive(&mut v, "amount", Some(&bad)),
                None,
                "{bad:?}"
            );
            assert!(!v.is_empty());
        }
    }
}

/// Digits after the decimal point of a currency's minor unit (ISO 4217).
pub fn minor_unit_digits(currency: &str) -> u32 {
    match currency {
        "CLP" | "ISK" | "JPY" | "KRW" | "VND" => 0,
        "BHD" | "KWD" => 3,
        _ => 2,
    }
}

/// An amount for people to read: `12.50 EUR`, `1200 JPY`, `-3.000 KWD`.
pub fn format_amount(currency: &str, amount_minor: i64) -> String {
    let digits = minor_unit_digits(currency);
    let sign = if amount_minor < 0 { "-" } else { "" };
    let abs = amount_minor.unsigned_abs();
    if digits == 0 {
        return format!("{sign}{abs} {currency}");
    }
    let scale = 10u64.pow(digits);
    format!(
        "{sign}{}.{:0width$} {currency}",
        abs / scale,
        abs % scale,
        width = digits as usize
    )
}

#[cfg(test)]
mod format_tests {
    use super::*;

    #[test]
    fn amounts_read_in_their_currency_minor_unit() {
        assert_eq!(format_amount("EUR", 1250), "12.50 EUR");
        assert_eq!(format_amount("EUR", 5), "0.05 EUR");
        assert_eq!(format_amount("JPY", 1200), "1200 JPY");
        assert_eq!(format_amount("KWD", -3000), "-3.000 KWD");
        assert_eq!(format_amount("USD", i64::MIN), "-92233720368547758.08 USD");
    }
}
