//! rounds-core: the domain model, the Automerge document schema, the billing engine and the
//! durable device replica of Rounds. Sans-IO except for the replica's own files: no sockets,
//! threads or clocks; time is passed in.
#![forbid(unsafe_code)]

pub mod adt;
pub mod alerts;
pub mod billing;
pub mod crypt;
pub mod datafile;
pub mod doc_file;
pub mod document;
pub mod ehr;
pub mod ids;
pub mod model;
pub mod month;
pub mod policy;
pub mod problem;
pub mod replica;
pub mod roster;
pub mod sync;
pub mod validate;
pub mod view;

pub use datafile::parse_data_file;
pub use ids::DocumentId;
pub use model::*;
pub use month::Month;
pub use problem::{Problem, Problems};
pub use replica::{Replica, ReplicaError, SyncWindow};
