/// Amounts for people: integer minor units shown with the currency's decimals, never via floating point.
public enum Money {
    /// ISO 4217 minor-unit exponents that are not 2.
    static let exponents: [String: Int] = [
        "BIF": 0, "CLP": 0, "DJF": 0, "GNF": 0, "ISK": 0, "JPY": 0, "KMF": 0, "KRW": 0, "PYG": 0, "RWF": 0, "UGX": 0,
        "UYI": 0, "VND": 0, "VUV": 0, "XAF": 0, "XOF": 0, "XPF": 0,
        "BHD": 3, "IQD": 3, "JOD": 3, "KWD": 3, "LYD": 3, "OMR": 3, "TND": 3,
        "CLF": 4, "UYW": 4,
    ]

    /// Digits after the decimal point for `currency` (2 unless ISO 4217 says otherwise).
    public static func decimals(_ currency: String) -> Int { exponents[currency] ?? 2 }

    /// `1250, "CNY"` → `"12.50 CNY"`; `500, "JPY"` → `"500 JPY"`; `-5, "EUR"` → `"-0.05 EUR"`.
    public static func format(_ amountMinor: Int64, _ currency: String) -> String {
        let places = decimals(currency)
        let negative = amountMinor < 0
        let magnitude = amountMinor.magnitude
        var text: String
        if places == 0 {
            text = String(magnitude)
        } else {
            var divisor: UInt64 = 1
            for _ in 0..<places { divisor *= 10 }
            let whole = magnitude / divisor
            let fraction = String(magnitude % divisor)
            text = "\(whole)." + String(repeating: "0", count: places - fraction.count) + fraction
        }
        return (negative ? "-" : "") + text + " " + currency
    }
}
