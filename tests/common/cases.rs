//! One `#[test]` per line, for tests that run a shared scenario on their own data.

/// `cases! { name: scenario(data); ... }` makes one `#[test] fn name()` per line, whose body
/// is that call.
#[allow(unused_macros)]
macro_rules! cases {
    ($($name:ident: $body:expr;)+) => {
        $(
            #[test]
            fn $name() {
                $body;
            }
        )+
    };
}

#[allow(unused_imports)]
pub(crate) use cases;
