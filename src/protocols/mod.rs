//! Wire formats Armoricore speaks: Phoenix Channels frames and JWT.

pub mod jwt;
pub mod phoenix;
