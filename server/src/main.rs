//! `communesync`: the provincial server and operator CLI.

fn main() {}
