//! End-to-end tests: real nats-server, real redb files, real actors.

#[path = "../mall_env.rs"]
mod mall_env;

mod central;
mod chaos;
mod cli;
mod cluster;
mod config;
mod contract;
mod crash;
mod customers;
mod dashboard;
mod depot;
mod fencing;
mod foundation;
mod framings;
mod instances;
mod library;
mod mall;
mod observability;
mod offsets;
mod rebuild;
mod reliability;
mod security;
mod standby;
mod store_nodes;
mod versions;
mod whisko;
