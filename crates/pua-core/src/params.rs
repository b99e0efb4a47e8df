//! The module parameters (`modparam("pua", ...)`) and their start-up
//! validation. Defaults and acceptance follow the 5.6.3 C module; every
//! refusal names the parameter, and so does every correction we log.

/// The C module's DEFAULT_DB_URL.
pub const DEFAULT_DB_URL: &str = "mysql://kamailio:kamailiorw@localhost/kamailio";
/// The largest hash_size we accept: 2^20 buckets (16 MiB of shm for the buckets).
pub const MAX_HASH_SIZE: i32 = 20;

/// `db_mode` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DbMode {
    /// 0: records in shared memory, synced to the database on a timer.
    Memory,
    /// 2: records only in the database.
    DbOnly,
}

/// The values as the script set them (C ints and strings).
#[derive(Clone, Debug)]
pub struct RawParams {
    pub hash_size: i32,
    pub db_url: Vec<u8>,
    pub db_table: Vec<u8>,
    pub min_expires: i32,
    pub default_expires: i32,
    pub update_period: i32,
    pub outbound_proxy: Vec<u8>,
    pub dlginfo_increase_version: i32,
    pub reginfo_increase_version: i32,
    pub check_remote_contact: i32,
    pub db_mode: i32,
    pub fetch_rows: i32,
    pub db_table_lock_write: i32,
}

impl Default for RawParams {
    fn default() -> Self {
        RawParams {
            hash_size: 9,
            db_url: DEFAULT_DB_URL.as_bytes().to_vec(),
            db_table: b"pua".to_vec(),
            min_expires: 0,
            default_expires: 3600,
            update_period: 100,
            outbound_proxy: Vec::new(),
            dlginfo_increase_version: 0,
            reginfo_increase_version: 0,
            check_remote_contact: 1,
            db_mode: 0,
            fetch_rows: 500,
            db_table_lock_write: 1,
        }
    }
}

/// The validated configuration the module runs with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Number of hash buckets (a power of two).
    pub buckets: usize,
    pub db_url: Vec<u8>,
    pub db_table: Vec<u8>,
    pub min_expires: u32,
    pub default_expires: u32,
    /// Seconds between database syncs; 0 disables the timers.
    pub update_period: u32,
    pub outbound_proxy: Vec<u8>,
    pub dlginfo_increase_version: bool,
    pub reginfo_increase_version: bool,
    pub check_remote_contact: bool,
    pub db_mode: DbMode,
    pub fetch_rows: u32,
    pub db_table_lock_write: bool,
}

/// A value that stops Kamailio from starting.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParamError {
    pub param: &'static str,
    pub message: String,
}

impl std::fmt::Display for ParamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "invalid modparam(\"pua\", \"{}\"): {}",
            self.param, self.message
        )
    }
}

/// A value we corrected (as the C module does), to be logged at start-up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Correction {
    pub param: &'static str,
    pub message: String,
    /// The C module logs db_mode's correction at ERROR level; we keep that.
    pub is_error: bool,
}

fn refuse(
    param: &'static str,
    message: impl Into<String>,
) -> Result<(Config, Vec<Correction>), ParamError> {
    Err(ParamError {
        param,
        message: message.into(),
    })
}

impl RawParams {
    /// Validates the values: refuses what the C module refuses (and a few
    /// values it would misbehave on), corrects what it corrects.
    pub fn validate(&self) -> Result<(Config, Vec<Correction>), ParamError> {
        let mut fixes = Vec::new();
        let mut fix = |param: &'static str, message: String, is_error: bool| {
            fixes.push(Correction {
                param,
                message,
                is_error,
            })
        };

        let min_expires = if self.min_expires < 0 {
            fix(
                "min_expires",
                format!("{} is negative, using 0", self.min_expires),
                false,
            );
            0
        } else {
            self.min_expires as u32
        };
        let default_expires = if self.default_expires < 600 {
            fix(
                "default_expires",
                format!("{} is below 600, using 3600", self.default_expires),
                false,
            );
            3600
        } else {
            self.default_expires as u32
        };
        // hash_size only matters for the table in memory (db_mode 0).
        if self.hash_size > MAX_HASH_SIZE && self.db_mode != 2 {
            return refuse(
                "hash_size",
                format!(
                    "{} would make 2^{} buckets; the largest accepted is {}",
                    self.hash_size, self.hash_size, MAX_HASH_SIZE
                ),
            );
        }
        let buckets = if self.hash_size <= 1 {
            512
        } else {
            1usize << self.hash_size
        };
        let db_mode = match self.db_mode {
            0 => DbMode::Memory,
            2 => DbMode::DbOnly,
            other => {
                fix("db_mode", format!("{other} is not 0 or 2, using 0"), true);
                DbMode::Memory
            }
        };
        if self.update_period < 0 {
            return refuse(
                "update_period",
                format!("{} is negative", self.update_period),
            );
        }
        if (1..=5).contains(&self.update_period) {
            return refuse(
                "update_period",
                format!(
                    "{} must be 0 (no timers) or greater than 5",
                    self.update_period
                ),
            );
        }
        if self.check_remote_contact != 0 && self.check_remote_contact != 1 {
            return refuse(
                "check_remote_contact",
                format!("{} must be 0 or 1", self.check_remote_contact),
            );
        }
        if self.fetch_rows <= 0 {
            return refuse(
                "fetch_rows",
                format!("{} must be a positive number of rows", self.fetch_rows),
            );
        }
        if self.db_url.is_empty() {
            return refuse("db_url", "is empty; the pua table needs a database");
        }
        if self.db_table.is_empty() {
            return refuse("db_table", "is empty");
        }
        Ok((
            Config {
                buckets,
                db_url: self.db_url.clone(),
                db_table: self.db_table.clone(),
                min_expires,
                default_expires,
                update_period: self.update_period as u32,
                outbound_proxy: self.outbound_proxy.clone(),
                dlginfo_increase_version: self.dlginfo_increase_version != 0,
                reginfo_increase_version: self.reginfo_increase_version != 0,
                check_remote_contact: self.check_remote_contact == 1,
                db_mode,
                fetch_rows: self.fetch_rows as u32,
                db_table_lock_write: self.db_table_lock_write == 1,
            },
            fixes,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(f: impl FnOnce(&mut RawParams)) -> Result<(Config, Vec<Correction>), ParamError> {
        let mut p = RawParams::default();
        f(&mut p);
        p.validate()
    }

    #[test]
    fn defaults_are_the_c_modules() {
        let (c, fixes) = RawParams::default().validate().unwrap();
        assert!(fixes.is_empty());
        assert_eq!(c.buckets, 512);
        assert_eq!(c.db_url, DEFAULT_DB_URL.as_bytes());
        assert_eq!(c.db_table, b"pua");
        assert_eq!(
            (c.min_expires, c.default_expires, c.update_period),
            (0, 3600, 100)
        );
        assert_eq!(c.db_mode, DbMode::Memory);
        assert!(c.check_remote_contact && c.db_table_lock_write);
        assert!(!c.dlginfo_increase_version && !c.reginfo_increase_version);
        assert_eq!(c.fetch_rows, 500);
    }

    #[test]
    fn hash_size_is_a_power_of_two() {
        assert_eq!(with(|p| p.hash_size = 1).unwrap().0.buckets, 512);
        assert_eq!(with(|p| p.hash_size = -3).unwrap().0.buckets, 512);
        assert_eq!(with(|p| p.hash_size = 4).unwrap().0.buckets, 16);
        assert_eq!(with(|p| p.hash_size = 20).unwrap().0.buckets, 1 << 20);
        assert_eq!(with(|p| p.hash_size = 21).unwrap_err().param, "hash_size");
        // In db_mode 2 there is no table in memory: any hash_size is accepted.
        assert!(with(|p| {
            p.hash_size = 40;
            p.db_mode = 2
        })
        .is_ok());
    }

    #[test]
    fn corrections_name_the_parameter() {
        let (c, f) = with(|p| p.min_expires = -5).unwrap();
        assert_eq!((c.min_expires, f[0].param), (0, "min_expires"));
        let (c, f) = with(|p| p.default_expires = 100).unwrap();
        assert_eq!((c.default_expires, f[0].param), (3600, "default_expires"));
        let (c, f) = with(|p| p.db_mode = 1).unwrap();
        assert_eq!(
            (c.db_mode, f[0].param, f[0].is_error),
            (DbMode::Memory, "db_mode", true)
        );
        assert_eq!(with(|p| p.db_mode = 2).unwrap().0.db_mode, DbMode::DbOnly);
    }

    #[test]
    fn refusals_name_the_parameter() {
        for (param, set) in [
            (
                "update_period",
                Box::new(|p: &mut RawParams| p.update_period = -1) as Box<dyn Fn(&mut RawParams)>,
            ),
            (
                "update_period",
                Box::new(|p: &mut RawParams| p.update_period = 3),
            ),
            (
                "update_period",
                Box::new(|p: &mut RawParams| p.update_period = 5),
            ),
            (
                "check_remote_contact",
                Box::new(|p: &mut RawParams| p.check_remote_contact = 2),
            ),
            (
                "check_remote_contact",
                Box::new(|p: &mut RawParams| p.check_remote_contact = -1),
            ),
            ("fetch_rows", Box::new(|p: &mut RawParams| p.fetch_rows = 0)),
            ("db_url", Box::new(|p: &mut RawParams| p.db_url.clear())),
            ("db_table", Box::new(|p: &mut RawParams| p.db_table.clear())),
        ] {
            let e = with(|p| set(p)).unwrap_err();
            assert_eq!(e.param, param);
            assert!(e.to_string().contains(param));
        }
        assert_eq!(with(|p| p.update_period = 0).unwrap().0.update_period, 0);
        assert_eq!(with(|p| p.update_period = 6).unwrap().0.update_period, 6);
    }
}
