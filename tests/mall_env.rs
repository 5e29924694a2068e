//! The mall on the test harness: a system of some of its contexts, by name. Shared by the test
//! targets that run the mall (the harness itself knows no application).

use carrier_actors::{CarrierSystem, SystemConfig};
use carrier_tests::TestEnv;

/// The mall's contexts on a [`TestEnv`].
pub trait MallEnv {
    /// A config for the mall's `contexts` against this environment, with a short ack wait.
    fn config(&self, contexts: &[&str]) -> SystemConfig;
    /// Starts a system running the mall's `contexts`.
    fn system(&self, contexts: &[&str]) -> impl std::future::Future<Output = CarrierSystem>;
}

impl MallEnv for TestEnv {
    fn config(&self, contexts: &[&str]) -> SystemConfig {
        let declared = carrier_actors::BoundedContext::select(&carrier_mall::contexts(), contexts)
            .expect("the mall declares these contexts");
        self.config_of(declared)
    }

    async fn system(&self, contexts: &[&str]) -> CarrierSystem {
        CarrierSystem::start(self.config(contexts)).await.expect("system starts")
    }
}
