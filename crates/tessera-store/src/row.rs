//! Reading a column by name from either kind of row the store meets: sqlx's (reads
//! through the pool) and rusqlite's (the writer's connection, see [`crate::writer`]).
//!
//! A record is decoded the same way wherever it is read, so the decoders (which report
//! malformed rows as [`crate::StoreError::Corrupt`]) are written once, against this trait.

use sqlx::sqlite::SqliteRow;
use sqlx::{Row as _, Sqlite};

use crate::StoreError;

/// A value both libraries can read from a column.
pub(crate) trait ColumnValue:
    for<'r> sqlx::Decode<'r, Sqlite> + sqlx::Type<Sqlite> + rusqlite::types::FromSql
{
}

impl<T> ColumnValue for T where
    T: for<'r> sqlx::Decode<'r, Sqlite> + sqlx::Type<Sqlite> + rusqlite::types::FromSql
{
}

/// A result row whose columns can be read by name.
pub(crate) trait Row {
    /// The column `name`, converted to `T`; a missing column or a value of the wrong type
    /// is a [`StoreError::Database`].
    fn column<T: ColumnValue>(&self, name: &str) -> Result<T, StoreError>;
}

impl Row for SqliteRow {
    fn column<T: ColumnValue>(&self, name: &str) -> Result<T, StoreError> {
        Ok(self.try_get(name)?)
    }
}

impl Row for rusqlite::Row<'_> {
    fn column<T: ColumnValue>(&self, name: &str) -> Result<T, StoreError> {
        Ok(self.get(name)?)
    }
}

/// Serialises a typed value (a task id, a client name) as the text it is stored as, so
/// audit details keep the same JSON whether a field is typed or not.
pub(crate) fn serialize_display<S: serde::Serializer>(
    value: &impl std::fmt::Display,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_str(value)
}

/// On the writer's connection: the first row `sql` returns for `params`, decoded, if
/// any. The statement is prepared once and cached.
pub(crate) fn query_optional<T>(
    conn: &rusqlite::Connection,
    sql: &str,
    params: impl rusqlite::Params,
    decode: impl FnOnce(&rusqlite::Row<'_>) -> Result<T, StoreError>,
) -> Result<Option<T>, StoreError> {
    let mut statement = conn.prepare_cached(sql)?;
    let mut rows = statement.query(params)?;
    rows.next()?.map(decode).transpose()
}

/// On the writer's connection: every row `sql` returns for `params`, decoded. The
/// statement is prepared once and cached.
pub(crate) fn query_all<T>(
    conn: &rusqlite::Connection,
    sql: &str,
    params: impl rusqlite::Params,
    mut decode: impl FnMut(&rusqlite::Row<'_>) -> Result<T, StoreError>,
) -> Result<Vec<T>, StoreError> {
    let mut statement = conn.prepare_cached(sql)?;
    let mut rows = statement.query(params)?;
    let mut decoded = Vec::new();
    while let Some(row) = rows.next()? {
        decoded.push(decode(row)?);
    }
    Ok(decoded)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::open_temp;

    /// The two libraries agree on what a column holds, including NULL and a type
    /// mismatch (which neither coerces: the tables are STRICT and so are the readers).
    #[tokio::test]
    async fn both_kinds_of_row_read_the_same_columns() {
        let (_dir, path, store) = open_temp().await;
        let sql = "SELECT 'text' AS t, 42 AS i, NULL AS n";
        let pooled = sqlx::query(sql).fetch_one(&store.inner.pool).await.unwrap();
        let conn = rusqlite::Connection::open(&path).unwrap();
        let mut statement = conn.prepare(sql).unwrap();
        let mut rows = statement.query([]).unwrap();
        let direct = rows.next().unwrap().unwrap();

        fn read(row: &impl Row) -> (String, i64, Option<i64>, bool, bool) {
            (
                row.column("t").unwrap(),
                row.column("i").unwrap(),
                row.column("n").unwrap(),
                row.column::<i64>("t").is_err(),
                row.column::<String>("missing").is_err(),
            )
        }
        let expected = ("text".to_owned(), 42, None, true, true);
        assert_eq!(read(&pooled), expected);
        assert_eq!(read(direct), expected);
    }
}
