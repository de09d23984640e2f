#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use cutover_executor::fake::{self, FakeProviders};
use cutover_executor::{ExecError, Executor, ExecutorConfig, FaultInjector, RetryPolicy};
use cutover_model::{DeploymentStatus, Plan, Release, Route};
use cutover_store::{DeploymentRecord, Store};

pub const ENV: &str = "production";
/// How often the test executor looks for new approvals.
pub const APPROVAL_POLL: Duration = Duration::from_millis(5);

pub struct Harness {
    pub store: Store,
    pub fake: FakeProviders,
    pub faults: Arc<FaultInjector>,
    pub exec: Executor,
}

pub fn harness() -> Harness {
    harness_with(4)
}

pub fn harness_with(max_parallel: usize) -> Harness {
    let store = Store::temporary().expect("temporary store");
    let fake = FakeProviders::new();
    let faults = Arc::new(FaultInjector::new());
    let exec = Executor::new(
        store.clone(),
        fake.providers(),
        ExecutorConfig {
            max_parallel,
            retry: RetryPolicy {
                max_attempts: 3,
                base_delay: Duration::from_millis(1),
                max_delay: Duration::from_millis(4),
            },
            faults: Some(faults.clone()),
            approval_poll: APPROVAL_POLL,
        },
    );
    Harness {
        store,
        fake,
        faults,
        exec,
    }
}

impl Harness {
    pub fn save(&self, plan: &Plan) {
        self.store
            .save_plan(plan, &DeploymentRecord::from_plan(plan))
            .expect("save plan");
    }

    /// Run, resuming after every injected crash (at most `max_crashes`).
    pub async fn run_to_end(&self, id: &str, max_crashes: usize) -> DeploymentStatus {
        let mut crashes = 0;
        loop {
            match self.exec.run(id).await {
                Ok(status) => return status,
                Err(e) if e.is_injected_crash() && crashes < max_crashes => crashes += 1,
                Err(e) => panic!("run {id} failed: {e}"),
            }
        }
    }

    /// Deploy release `r1` (first deployment, no blue) and return it.
    pub async fn first_release(&self) -> Release {
        let plan = fake::planned_deploy("r1", ENV, None, 2);
        self.save(&plan);
        assert_eq!(self.run_to_end("r1", 0).await, DeploymentStatus::Succeeded);
        self.store.release(ENV, "r1").unwrap().expect("r1 recorded")
    }

    /// Deploy `r1`, then return the plan of `d2` deploying `r2` over it (saved, not run).
    pub async fn second_plan(&self) -> (Release, Plan) {
        let r1 = self.first_release().await;
        let route = self.route();
        let plan = fake::planned_deploy_routed("r2", ENV, Some(&r1), 2, route.as_ref());
        self.save(&plan);
        (r1, plan)
    }

    /// The planner's rollback `rb3` from the current r2 back to r1, with the instances of
    /// r1 that run now (all of them: warm). Not saved.
    pub fn rollback_to_r1(&self) -> Plan {
        let r1 = self.store.release(ENV, "r1").unwrap().expect("r1 recorded");
        let r2 = self.store.release(ENV, "r2").unwrap().expect("r2 recorded");
        fake::planned_rollback(
            "rb3",
            ENV,
            &r1,
            Some(&r2),
            &self.fake.running_instances_of("r1"),
        )
    }

    pub fn route(&self) -> Option<Route> {
        self.fake.route(ENV)
    }

    pub fn instances(&self) -> Vec<String> {
        self.fake.world().instances.keys().cloned().collect()
    }

    /// Traffic goes only to `release`, on its current instances.
    pub fn assert_route_on(&self, release: &str) {
        let route = self.route().expect("a route");
        assert_eq!(route.backends.len(), 1, "{route:?}");
        assert_eq!(route.backends[0].release, release);
        let world = self.fake.world();
        let mut addrs: Vec<String> = world
            .instances
            .values()
            .filter(|i| i.release == release)
            .map(|i| i.addr.clone())
            .collect();
        let mut routed = route.backends[0].addrs.clone();
        addrs.sort();
        routed.sort();
        assert_eq!(
            routed, addrs,
            "route addrs are the running instances of {release}"
        );
    }

    /// After a failed deploy of r2 over r1: everything is as before it.
    pub fn assert_rolled_back_to_r1(&self, status: &DeploymentStatus, step: &str) {
        match status {
            DeploymentStatus::RolledBack { reason } => {
                assert!(reason.contains(step), "reason {reason:?} names step {step}")
            }
            other => panic!("expected rolled back, got {other:?}"),
        }
        self.assert_route_on("r1");
        assert!(self.fake.instances_of("r2").is_empty(), "green removed");
        assert_eq!(self.fake.instances_of("r1").len(), 2, "blue kept");
        assert_eq!(
            self.store.current_release_id(ENV).unwrap().as_deref(),
            Some("r1")
        );
        assert!(self.store.release(ENV, "r2").unwrap().is_none());
        assert!(self.store.retirements(ENV).unwrap().is_empty());
        assert!(self.store.lease(ENV).unwrap().is_none(), "lease released");
        let record = self.store.deployment("r2").unwrap().unwrap();
        assert_eq!(&record.status, status);
    }

    /// After a successful deploy of r2 over r1.
    pub fn assert_deployed_r2(&self) {
        self.assert_route_on("r2");
        let mut green = self.fake.instances_of("r2");
        green.sort();
        assert_eq!(
            green,
            [fake::instance_name("r2", 0), fake::instance_name("r2", 1)]
        );
        assert_eq!(self.fake.instances_of("r1").len(), 2, "blue kept warm");
        assert_eq!(self.instances().len(), 4, "no orphans");
        assert_eq!(
            self.store.current_release_id(ENV).unwrap().as_deref(),
            Some("r2")
        );
        let retirements = self.store.retirements(ENV).unwrap();
        assert_eq!(retirements.len(), 1);
        assert_eq!(retirements[0].release, "r1");
        assert!(self.store.lease(ENV).unwrap().is_none());
        for (name, n) in &self.fake.world().created {
            assert_eq!(*n, 1, "instance {name} created once");
        }
    }
}

/// Poll `cond` every 5 ms until it holds; panic naming `what` after `timeout`.
pub async fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + timeout;
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

pub fn is_lease_held(e: &ExecError) -> bool {
    matches!(
        e,
        ExecError::Store(cutover_store::StoreError::LeaseHeld { .. })
    )
}
