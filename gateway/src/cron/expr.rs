//! Five-field cron expressions (minute, hour, day of month, month, day of
//! week; UTC): `*`, `N`, `A-B`, `*/S`, `A-B/S` and lists of those. As in
//! classic cron, when both day fields are restricted a day matching
//! either one is a match; day of week 0 and 7 are Sunday.

/// A parsed expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CronExpr {
    text: String,
    minutes: u64,
    hours: u32,
    days: u32,
    months: u16,
    weekdays: u8,
    any_day: bool,
    any_weekday: bool,
}

fn field(text: &str, name: &str, min: u32, max: u32) -> Result<(u64, bool), String> {
    let mut bits = 0u64;
    let bad = |why: &str| format!("{name} field `{text}`: {why}");
    for part in text.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => {
                let step: u32 = s.parse().map_err(|_| bad("the step is not a number"))?;
                if step == 0 || step > max {
                    return Err(bad("the step is out of range"));
                }
                (r, step)
            }
            None => (part, 1),
        };
        let (lo, hi) = if range == "*" {
            (min, max)
        } else if let Some((a, b)) = range.split_once('-') {
            let a: u32 = a.parse().map_err(|_| bad("not a number"))?;
            let b: u32 = b.parse().map_err(|_| bad("not a number"))?;
            (a, b)
        } else {
            let n: u32 = range.parse().map_err(|_| bad("not a number"))?;
            // `N/S` means N, N+S, … up to the maximum.
            if part.contains('/') { (n, max) } else { (n, n) }
        };
        if lo < min || hi > max || lo > hi {
            return Err(bad(&format!("values must be within {min}-{max}")));
        }
        let mut v = lo;
        while v <= hi {
            bits |= 1 << v;
            v += step;
        }
    }
    Ok((bits, text == "*"))
}

impl CronExpr {
    /// Parses five whitespace-separated fields; the error says which field
    /// is wrong and why.
    pub fn parse(text: &str) -> Result<CronExpr, String> {
        let fields: Vec<&str> = text.split_whitespace().collect();
        if fields.len() != 5 {
            return Err(format!(
                "`{text}` has {} fields; a schedule has five (minute hour day-of-month month day-of-week, UTC)",
                fields.len()
            ));
        }
        let (minutes, _) = field(fields[0], "minute", 0, 59)?;
        let (hours, _) = field(fields[1], "hour", 0, 23)?;
        let (days, any_day) = field(fields[2], "day-of-month", 1, 31)?;
        let (months, _) = field(fields[3], "month", 1, 12)?;
        let (mut weekdays, any_weekday) = field(fields[4], "day-of-week", 0, 7)?;
        if weekdays & (1 << 7) != 0 {
            weekdays |= 1;
        }
        Ok(CronExpr {
            text: fields.join(" "),
            minutes,
            hours: hours as u32,
            days: days as u32,
            months: months as u16,
            weekdays: (weekdays & 0x7f) as u8,
            any_day,
            any_weekday,
        })
    }

    /// The expression as written (fields separated by one space).
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Whether the minute starting at `minute` (Unix minutes, UTC) matches.
    pub fn matches(&self, minute: u64) -> bool {
        let (m, h) = (minute % 60, (minute / 60) % 24);
        let days = minute / (60 * 24);
        let (_, month, day) = civil_from_days(days as i64);
        // 1970-01-01 was a Thursday (4).
        let weekday = ((days + 4) % 7) as u8;
        if self.minutes & (1 << m) == 0
            || self.hours & (1 << h) == 0
            || self.months & (1 << month) == 0
        {
            return false;
        }
        let day_ok = self.days & (1 << day) != 0;
        let weekday_ok = self.weekdays & (1 << weekday) != 0;
        match (self.any_day, self.any_weekday) {
            (true, true) => true,
            (false, true) => day_ok,
            (true, false) => weekday_ok,
            (false, false) => day_ok || weekday_ok,
        }
    }
}

/// (year, month 1–12, day 1–31) of a day count since 1970-01-01 (Howard
/// Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Unix minute of a UTC date and time.
    fn at(days_since_epoch: u64, hour: u64, minute: u64) -> u64 {
        days_since_epoch * 1440 + hour * 60 + minute
    }

    #[test]
    fn dates_are_civil() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        // 2026-12-01 is day 20788.
        assert_eq!(civil_from_days(20_788), (2026, 12, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
    }

    #[test]
    fn fields_match() {
        let every5 = CronExpr::parse("*/5 * * * *").unwrap();
        assert!(every5.matches(at(1, 3, 10)));
        assert!(!every5.matches(at(1, 3, 11)));
        let nine_weekdays = CronExpr::parse("0 9 * * 1-5").unwrap();
        // 2026-12-01 (day 20788) is a Tuesday; 2026-12-06 a Sunday.
        assert!(nine_weekdays.matches(at(20_788, 9, 0)));
        assert!(!nine_weekdays.matches(at(20_793, 9, 0)));
        assert!(!nine_weekdays.matches(at(20_788, 10, 0)));
        let sunday = CronExpr::parse("30 23 * * 7").unwrap();
        assert!(sunday.matches(at(20_793, 23, 30)));
        // Both day fields restricted: either one.
        let either = CronExpr::parse("0 0 1 * 0").unwrap();
        assert!(either.matches(at(20_788, 0, 0)), "the 1st");
        assert!(either.matches(at(20_793, 0, 0)), "a Sunday");
        assert!(!either.matches(at(20_789, 0, 0)));
        let list = CronExpr::parse("0,30 12 15 6,12 *").unwrap();
        assert!(list.matches(at(20_802, 12, 30)), "2026-12-15 12:30");
        assert_eq!(
            CronExpr::parse(" */5  *  * * * ").unwrap().text(),
            "*/5 * * * *"
        );
    }

    #[test]
    fn bad_expressions_say_why() {
        for (bad, says) in [
            ("* * * *", "four fields"),
            ("60 * * * *", "minute"),
            ("* 24 * * *", "hour"),
            ("* * 0 * *", "day-of-month"),
            ("* * * 13 *", "month"),
            ("* * * * 8", "day-of-week"),
            ("*/0 * * * *", "step"),
            ("a * * * *", "minute"),
            ("5-1 * * * *", "minute"),
            ("@daily", "field"),
        ] {
            let e = CronExpr::parse(bad).unwrap_err();
            let says = if says == "four fields" {
                "4 fields"
            } else {
                says
            };
            assert!(e.contains(says), "{bad}: {e}");
        }
    }
}
