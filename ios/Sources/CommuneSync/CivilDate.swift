// Civil dates (due dates in Vietnam) as `DateComponents` (Gregorian year, month, day): a `Date`
// would be an instant, which reads as another day in another time zone. The generated bindings
// call these two functions (bindings/uniffi.toml); the engine sends and takes `YYYY-MM-DD`.
import Foundation

/// `YYYY-MM-DD` from the engine as Gregorian date components.
func civilDateComponents(_ text: String) -> DateComponents {
    let parts = text.split(separator: "-").compactMap { Int($0) }
    guard parts.count == 3 else { return DateComponents() }
    return DateComponents(calendar: Calendar(identifier: .gregorian), year: parts[0], month: parts[1], day: parts[2])
}

/// Date components as `YYYY-MM-DD` for the engine (a missing part gives a text it refuses with
/// `CommuneSyncError.InvalidInput`).
func civilDateText(_ date: DateComponents) -> String {
    guard let year = date.year, let month = date.month, let day = date.day,
          (0...9999).contains(year) else { return "invalid date \(date)" }
    let pad = { (n: Int, width: Int) in String(repeating: "0", count: max(0, width - String(n).count)) + String(n) }
    return "\(pad(year, 4))-\(pad(month, 2))-\(pad(day, 2))"
}

extension DateComponents {
    /// A civil date (Gregorian year, month, day), as the engine takes it.
    public static func civil(_ year: Int, _ month: Int, _ day: Int) -> DateComponents {
        DateComponents(calendar: Calendar(identifier: .gregorian), year: year, month: month, day: day)
    }

    /// The civil date of `date` in Vietnam (the engine's dates are Vietnamese civil dates).
    public static func civilInVietnam(_ date: Date) -> DateComponents {
        var calendar = Calendar(identifier: .gregorian)
        calendar.timeZone = TimeZone(identifier: "Asia/Ho_Chi_Minh") ?? TimeZone(secondsFromGMT: 7 * 3600)!
        var parts = calendar.dateComponents([.year, .month, .day], from: date)
        parts.calendar = Calendar(identifier: .gregorian)
        return parts
    }
}
