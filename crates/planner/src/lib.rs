//! The pure planner: spec + strategy + current release -> immutable, digested plan DAG
