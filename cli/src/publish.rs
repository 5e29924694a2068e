//! `carrier publish`: one event from JSON, encoded and published as Carrier itself would (or in
//! any other framing Carrier reads).

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use carrier_actors::bus::Bus;
use carrier_mall::stores::StoresEvent;
use carrier_messages::codec::Causality;
use carrier_messages::{ContentType, Decoded, DomainEvent, EventId, WireFormat};

/// Arguments of `carrier publish`.
#[derive(clap::Args)]
pub struct PublishArgs {
    /// Event type, e.g. `stores.StoreCreated`.
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
    traceparent: Option<carrier_messages::trace::TraceContext>,
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

pub async fn main(args: PublishArgs) -> anyhow::Result<ExitCode> {
    crate::init_logging("warn", false);
    if !StoresEvent::EVENT_TYPES.contains(&args.event_type.as_str()) {
        bail!("unknown event type {:?}; known: {}", args.event_type, StoresEvent::EVENT_TYPES.join(", "));
    }
    let event = StoresEvent::decode_payload(&args.event_type, 1, ContentType::Json, args.payload.as_bytes())
        .context("the payload does not fit the event type")?;
    event.validate().context("the payload breaks the contract")?;
    let causality = Causality {
        correlation_id: args.correlation_id,
        causation_id: None,
        trace: args.traceparent,
        idempotency: None,
    };
    let mut decoded = Decoded::new(event, args.aggregate_version, &causality);
    if let Some(id) = args.event_id {
        decoded.envelope.event_id = id;
        if causality.correlation_id.is_none() {
            decoded.envelope.correlation_id = id.to_string();
        }
    }
    if let Encoding::Json = args.encoding {
        decoded.envelope.content_type = ContentType::Json;
    }
    let wire = decoded.encode_as(args.format.into()).context("encoding failed")?;
    let bus = Bus::connect(args.nats.options()?, "carrier-publish", Duration::from_secs(5)).await?;
    bus.ensure_event_stream::<StoresEvent>().await?;
    let receipt = bus.publish(&wire).await?;
    println!(
        "{} {} v{} event {} on {}: stream seq {}{}",
        args.event_type,
        decoded.envelope.aggregate_id,
        decoded.envelope.aggregate_version,
        decoded.envelope.event_id,
        wire.subject,
        receipt.stream_seq,
        if receipt.duplicate { " (duplicate: JetStream already had this event id)" } else { "" }
    );
    Ok(ExitCode::SUCCESS)
}
