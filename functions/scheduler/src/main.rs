use herald_scheduler::{handle, Scheduler};
use lambda_runtime::{run, service_fn, Error};

#[tokio::main]
async fn main() -> Result<(), Error> {
    lambda_runtime::tracing::init_default_subscriber();
    let scheduler = Scheduler::from_env().await?;
    let scheduler = &scheduler;
    run(service_fn(move |event| handle(scheduler, event))).await
}
