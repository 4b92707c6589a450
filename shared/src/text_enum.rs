//! Enums stored as text columns: SQL keeps its strings, Rust compares enums.

/// Implements sqlx's `Type` and `Decode` for PostgreSQL text on an enum that
/// implements `FromStr` (its error `Display`): a value the enum does not
/// know fails the row's decode with that error, never turns into a default.
#[macro_export]
macro_rules! decode_from_text {
    ($ty:ty) => {
        impl sqlx::Type<sqlx::Postgres> for $ty {
            fn type_info() -> sqlx::postgres::PgTypeInfo {
                <String as sqlx::Type<sqlx::Postgres>>::type_info()
            }

            fn compatible(ty: &sqlx::postgres::PgTypeInfo) -> bool {
                <String as sqlx::Type<sqlx::Postgres>>::compatible(ty)
            }
        }

        impl<'r> sqlx::Decode<'r, sqlx::Postgres> for $ty {
            fn decode(
                value: sqlx::postgres::PgValueRef<'r>,
            ) -> Result<Self, sqlx::error::BoxDynError> {
                let text = <&str as sqlx::Decode<sqlx::Postgres>>::decode(value)?;
                text.parse::<$ty>().map_err(|e| e.to_string().into())
            }
        }
    };
}
