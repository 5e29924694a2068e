//! `carrier demo --story whisko`: seed 004 in one process. Users register, change their contact,
//! pay; a payment fails and is retried; two writers race on one user; a user is deleted and then
//! refuses commands; every read goes through the HTTP API and the projections, with the
//! command's position for read-your-writes. It exits 0 only when every projection (and the mail
//! list the event bus wrote) equals a fold of the streams.

use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use crate::http::WhiskoApi;
use crate::Whisko;
use anyhow::{bail, Context};
use carrier_actors::SystemConfig;
use carrier_http::ApiKeys;
use serde_json::{json, Value};

/// One HTTP exchange: status and JSON body.
pub(crate) struct Exchange {
    pub status: u16,
    pub body: Value,
}

/// One request to the API, with a JSON body when given and extra headers.
pub(crate) async fn call(
    method: &'static str,
    url: String,
    body: Option<Value>,
    headers: Vec<(&'static str, String)>,
) -> anyhow::Result<Exchange> {
    tokio::task::spawn_blocking(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(10)))
            .build()
            .into();
        let mut request = ureq::http::Request::builder().method(method).uri(&url);
        for (name, value) in &headers {
            request = request.header(*name, value.as_str());
        }
        if body.is_some() {
            request = request.header("Content-Type", "application/json");
        }
        let request = request.body(body.map(|b| b.to_string()).unwrap_or_default())?;
        let mut response = agent.run(request).with_context(|| format!("{method} {url}"))?;
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string().unwrap_or_default();
        let body =
            if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap_or(Value::String(text)) };
        Ok(Exchange { status, body })
    })
    .await?
}

/// Serves the API on a loopback port; returns its base URL.
pub(crate) async fn serve(whisko: &Whisko, keys: ApiKeys) -> anyhow::Result<(tokio::task::JoinHandle<()>, String)> {
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await.context("listen")?;
    let url = format!("http://{}", listener.local_addr().context("address")?);
    let router = crate::http::router(WhiskoApi::of(whisko), keys);
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    Ok((server, url))
}

/// Expects `status`, or fails naming the step.
fn expect(step: &str, exchange: &Exchange, status: u16) -> anyhow::Result<()> {
    if exchange.status != status {
        bail!("{step}: expected HTTP {status}, got {} {}", exchange.status, exchange.body);
    }
    Ok(())
}

/// Runs Whisko's story of `carrier demo --story whisko` on `nats`, its files in `data_dir`.
pub async fn main(nats: &carrier_actors::NatsOptions, data_dir: &Path, timeout: Duration) -> anyhow::Result<ExitCode> {
    let config = SystemConfig::new(nats.clone(), data_dir, crate::contexts());
    let whisko = Whisko::start(config).await.context("whisko did not start")?;
    let (server, base) = serve(&whisko, ApiKeys::default()).await?;
    println!("Whisko's HTTP API at {base}; users and payments are event-sourced in the streams USERS and BILLING\n");
    let outcome = story(&whisko, &base).await;
    let verdict = match outcome {
        Err(e) => {
            println!("\nthe story failed: {e:#}");
            Err(e)
        }
        Ok(()) => {
            println!("\n--- checking every projection against a fold of the streams ---");
            if !whisko.settle(timeout).await {
                println!("the projections or the event bus did not catch up within {timeout:?}");
            }
            let problems = crate::verify::check(&whisko).await.map_err(anyhow::Error::msg)?;
            if problems.is_empty() {
                println!("user_views, payment_views and the mail list equal a fold of USERS and BILLING: OK");
                Ok(())
            } else {
                for p in &problems {
                    println!("MISMATCH: {p}");
                }
                Err(anyhow::anyhow!("{} mismatches", problems.len()))
            }
        }
    };
    server.abort();
    whisko.shutdown().await;
    match verdict {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(_) => Ok(ExitCode::FAILURE),
    }
}

async fn story(whisko: &Whisko, base: &str) -> anyhow::Result<()> {
    let started = Instant::now();
    let post = |path: &str, body: Value| call("POST", format!("{base}{path}"), Some(body), Vec::new());
    let patch = |path: &str, body: Value| call("PATCH", format!("{base}{path}"), Some(body), Vec::new());
    // Reads name the position of the write they must see.
    let read = |path: String, position: &Value| {
        let position = position.as_str().unwrap_or_default().to_string();
        call("GET", format!("{base}{path}"), None, vec![("Carrier-Min-Position", position)])
    };

    println!("--- users register ---");
    let mut users = Vec::new();
    for (name, email, phone) in [
        ("An Nguyen", "an@whisko.example", "+84 90 123 4567"),
        ("Binh Tran", "binh@whisko.example", ""),
        ("Chi Le", "chi@whisko.example", "+84 91 765 4321"),
    ] {
        let created =
            post("/users", json!({ "name": name, "email": email, "phone": phone, "address": "Da Nang" })).await?;
        expect("POST /users", &created, 201)?;
        let (id, position) =
            (created.body["id"].as_str().unwrap_or_default().to_string(), created.body["position"].clone());
        let seen = read(format!("/users/{id}"), &position).await?;
        expect("GET /users/{id} with the command's position", &seen, 200)?;
        println!(
            "{name}: id {id}, stored at {position}; read back at once: {} <{}>",
            seen.body["name"],
            seen.body["email"].as_str().unwrap_or("")
        );
        users.push((id, position));
    }
    let bad = post("/users", json!({ "name": "No Mail", "email": "not-an-address" })).await?;
    expect("POST /users with a bad e-mail", &bad, 422)?;
    println!("a bad e-mail is refused: {} {}", bad.status, bad.body["error"]["message"]);

    println!("\n--- a user changes contact ---");
    let (an, _) = users[0].clone();
    let changed = patch(
        &format!("/users/{an}/contact"),
        json!({ "email": "an.nguyen@whisko.example", "phone": "+84 90 000 1111" }),
    )
    .await?;
    expect("PATCH contact", &changed, 200)?;
    let seen = read(format!("/users/{an}"), &changed.body["position"]).await?;
    println!("An's contact is now {} / {} (version {})", seen.body["email"], seen.body["phone"], seen.body["version"]);

    println!("\n--- two writers race on one user ---");
    let (binh, _) = users[1].clone();
    let racers = (0..8).map(|n| {
        let (store, id) = (whisko.users.clone(), binh.clone());
        tokio::spawn(async move {
            let command = crate::users::UsersCommand::UpdateProfile {
                id,
                name: format!("Binh Tran ({n})"),
                address: format!("Hue, house {n}"),
            };
            store.execute(command, Default::default()).await.map(|d| d.event.envelope.aggregate_version)
        })
    });
    let mut versions = Vec::new();
    for racer in racers {
        versions.push(racer.await?.map_err(|e| anyhow::anyhow!("a racing update failed: {e}"))?);
    }
    versions.sort_unstable();
    let distinct = versions.windows(2).all(|w| w[0] != w[1]);
    println!(
        "8 concurrent profile updates stored as versions {versions:?}: {}",
        if distinct { "each version won once" } else { "A VERSION WON TWICE" }
    );
    if !distinct {
        bail!("two writers won the same version");
    }

    println!("\n--- payments ---");
    let order_base =
        (std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis() % 1_000_000_000) as i64 * 10;
    let items = json!([{ "name": "Grooming", "quantity": 1, "price": 300000 }, { "name": "Cat food", "quantity": 2, "price": 100000 }]);
    let mut payments = Vec::new();
    for (n, (user, position)) in users.iter().take(2).enumerate() {
        let order = order_base + n as i64 + 1;
        let created = call(
            "POST",
            format!("{base}/payments"),
            Some(json!({ "userId": user, "orderCode": order, "amount": 500000, "items": items })),
            vec![("Carrier-Min-Position", position.as_str().unwrap_or_default().to_string())],
        )
        .await?;
        expect("POST /payments", &created, 201)?;
        println!("order {order}: payment {} created, pending", created.body["id"]);
        payments.push((created.body["id"].as_str().unwrap_or_default().to_string(), order));
    }
    let again = post(
        "/payments",
        json!({ "userId": users[0].0, "orderCode": payments[0].1, "amount": 500000, "items": items }),
    )
    .await?;
    expect("a second payment for the same order", &again, 409)?;
    println!("a second payment for order {} is refused: {}", payments[0].1, again.body["error"]["code"]);

    let status = |id: &str, to: &str| post(&format!("/payments/{id}/status"), json!({ "status": to }));
    let (first, second) = (payments[0].0.clone(), payments[1].0.clone());
    expect("pay", &status(&first, "paid").await?, 200)?;
    println!("payment {first}: pending -> paid");
    expect("fail", &status(&second, "failed").await?, 200)?;
    println!("payment {second}: pending -> failed");
    let illegal = status(&second, "paid").await?;
    expect("failed -> paid", &illegal, 409)?;
    println!("failed -> paid is refused: {}", illegal.body["error"]["message"]);
    expect("retry", &status(&second, "pending").await?, 200)?;
    let paid = status(&second, "paid").await?;
    expect("paid after the retry", &paid, 200)?;
    println!("payment {second}: failed -> pending (a retry) -> paid");
    let seen = read(format!("/payments/by-order/{}", payments[1].1), &paid.body["position"]).await?;
    println!("by order {}: status {}, version {}", payments[1].1, seen.body["status"], seen.body["version"]);
    let listed = read(format!("/users/{}/payments", users[0].0), &paid.body["position"]).await?;
    println!("An's payments: {}", listed.body["total"]);

    println!("\n--- a user is deleted ---");
    let (chi, _) = users[2].clone();
    let deleted = call("DELETE", format!("{base}/users/{chi}"), None, Vec::new()).await?;
    expect("DELETE /users/{id}", &deleted, 200)?;
    let gone = read(format!("/users/{chi}"), &deleted.body["position"]).await?;
    expect("GET a deleted user", &gone, 404)?;
    let refused = patch(&format!("/users/{chi}/profile"), json!({ "name": "Chi" })).await?;
    expect("update a deleted user", &refused, 409)?;
    println!(
        "Chi is deleted: reads answer {}, commands {} {}",
        gone.status, refused.status, refused.body["error"]["code"]
    );

    let search = call("GET", format!("{base}/users?search=whisko.example&limit=10"), None, Vec::new()).await?;
    println!("\nsearch \"whisko.example\": {} live users", search.body["total"]);
    println!("the story took {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}
