//! `carrier publish`: one event from JSON, encoded and published as Carrier itself would (or in
//! any other framing Carrier reads).

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use carrier_actors::Bus;
use carrier_messages::Causality;
use carrier_messages::JsonEvent;
use carrier_messages::{ContentType, EventCatalog, EventId, WireFormat};

/// Arguments of `carrier publish`.
#[derive(clap::Args)]
pub struct PublishArgs {
    /// Event type, e.g. `stores.StoreCreated`: any event of a context this binary declares.
    event_type: String,
    /// The payload as JSON, e.g. '{"id":"s-1","name":"Corner Shop","location":"North wing"}'.
    payload: String,
    /// The entity's version after this event (1 for the event that creates it).
    #[arg(long = "aggregate-version", value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    aggregate_version: u64,
    /// Reuse an event id (to re-publish an event); a new UUIDv7 otherwise.
    #[arg(long)]
    event_id: Option<EventId>,
    /// Correlation id to carry.
    #[arg(long)]
    correlation_id: Option<String>,
    /// W3C trace context of the span publishing it (`00-<trace id>-<span id>-<flags>`); a new
    /// trace otherwise.
    #[arg(long)]
    traceparent: Option<carrier_messages::TraceContext>,
    /// The payload's encoding.
    #[arg(long, value_enum, default_value = "cbor")]
    encoding: Encoding,
    /// The framing: Carrier's structured CBOR (what Carrier writes), CloudEvents structured JSON
    /// or binary mode, or Carrier's older headers (docs/wire-contract.md, "Framing").
    #[arg(long, value_enum, default_value = "structured")]
    format: Format,
    #[command(flatten)]
    nats: crate::nats::NatsArgs,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Encoding {
    Cbor,
    Json,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Format {
    Structured,
    CloudeventsJson,
    CloudeventsBinary,
    Headers,
}

impl From<Format> for WireFormat {
    fn from(format: Format) -> WireFormat {
        match format {
            Format::Structured => WireFormat::Structured,
            Format::CloudeventsJson => WireFormat::CloudEventsJson,
            Format::CloudeventsBinary => WireFormat::CloudEventsBinary,
            Format::Headers => WireFormat::Headers,
        }
    }
}

pub async fn main(args: PublishArgs, app: &crate::App) -> anyhow::Result<ExitCode> {
    crate::init_logging("warn", false);
    let catalogs: Vec<EventCatalog> = app.contexts.iter().filter_map(|c| c.events().copied()).collect();
    let catalog = EventCatalog::find(&catalogs, &args.event_type)?;
    let causality = Causality {
        correlation_id: args.correlation_id,
        causation_id: None,
        trace: args.traceparent,
        idempotency: None,
    };
    let content_type = match args.encoding {
        Encoding::Cbor => ContentType::Cbor,
        Encoding::Json => ContentType::Json,
    };
    let event = JsonEvent {
        event_type: &args.event_type,
        payload: args.payload.as_bytes(),
        aggregate_version: args.aggregate_version,
        event_id: args.event_id,
        causality,
        content_type,
        format: args.format.into(),
    };
    let (envelope, wire) = catalog.write(&event)?;
    let bus = Bus::connect(args.nats.options()?, &format!("{}-publish", crate::binary_name()), Duration::from_secs(5))
        .await?;
    bus.ensure_stream(catalog.stream, catalog.subjects).await.context("the event's stream")?;
    let receipt = bus.publish(&wire).await?;
    println!(
        "{} {} v{} event {} on {}: stream seq {}{}",
        args.event_type,
        envelope.aggregate_id,
        envelope.aggregate_version,
        envelope.event_id,
        wire.subject,
        receipt.stream_seq,
        if receipt.duplicate { " (duplicate: JetStream already had this event id)" } else { "" }
    );
    Ok(ExitCode::SUCCESS)
}
