//! `GET /traefik-config`: the Traefik HTTP-provider dynamic configuration
//! for the whole cluster, built from what each replica holds.
//!
//! Every known channel gets a router for `/ws/{id}` and every attached one
//! a router for `/webhook/{id}`, both to the channel's own service: the
//! replica holding it, or (known but held by nobody) the replicas that know
//! it. Everything else the public may reach (`/new`, `/auth/`, `/healthz`,
//! `/readyz`, and webhooks or attaches of channels no route names yet) goes
//! to every alive replica through the lowest-priority router, except
//! `/auth/`: a GitHub sign-in in progress lives in the memory of the
//! replica that started it, so its callback and polls must return there;
//! every replica names the same one (the lowest `server_url`). Names derive
//! from channel ids only and maps are sorted, so an unchanged cluster gives
//! the same document and Traefik does not churn.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};
use uuid::Uuid;

/// Router priority of the per-channel routes (above the catch-all's).
const CHANNEL_PRIORITY: u32 = 100;

/// Router priority of the sign-in route (above the catch-all's).
const SIGN_IN_PRIORITY: u32 = 50;

/// Router priority of the catch-all route.
const DEFAULT_PRIORITY: u32 = 1;

/// The service and router that take every sign-in to one replica.
pub const SIGN_IN: &str = "wow-sign-in";

/// The service that balances over every alive replica.
pub const REPLICAS_SERVICE: &str = "wow-replicas";

/// The router for everything no channel route takes.
pub const DEFAULT_ROUTER: &str = "wow-default";

/// Paths of the catch-all router: the public endpoints any replica serves.
const PUBLIC_PREFIXES: [&str; 6] = ["/new", "/auth/", "/healthz", "/readyz", "/webhook/", "/ws/"];

/// What one alive replica holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holdings {
    /// Where it serves HTTP.
    pub server_url: String,
    /// Channels it knows.
    pub known: Vec<Uuid>,
    /// Channels a client holds there.
    pub attached: Vec<Uuid>,
}

/// Builds the dynamic configuration for `replicas`.
pub fn dynamic_config(replicas: &[Holdings]) -> Value {
    let mut holder: BTreeMap<Uuid, &str> = BTreeMap::new();
    let mut knowers: BTreeMap<Uuid, BTreeSet<&str>> = BTreeMap::new();
    let mut urls: BTreeSet<&str> = BTreeSet::new();
    for replica in replicas {
        let url = replica.server_url.as_str();
        urls.insert(url);
        for channel in &replica.attached {
            // Two holders only while a move settles: pick one, stably.
            let chosen = holder.entry(*channel).or_insert(url);
            *chosen = (*chosen).min(url);
            knowers.entry(*channel).or_default().insert(url);
        }
        for channel in &replica.known {
            knowers.entry(*channel).or_default().insert(url);
        }
    }

    let mut routers = serde_json::Map::new();
    let mut services = serde_json::Map::new();
    for (channel, known_by) in &knowers {
        let service = format!("wow-channel-{channel}");
        let servers: Vec<&str> = match holder.get(channel) {
            Some(url) => vec![*url],
            None => known_by.iter().copied().collect(),
        };
        services.insert(service.clone(), load_balancer(&servers));
        routers.insert(
            format!("wow-ws-{channel}"),
            router(
                &format!("PathPrefix(`/ws/{channel}`)"),
                &service,
                CHANNEL_PRIORITY,
            ),
        );
        if holder.contains_key(channel) {
            routers.insert(
                format!("wow-webhook-{channel}"),
                router(
                    &format!("PathPrefix(`/webhook/{channel}`)"),
                    &service,
                    CHANNEL_PRIORITY,
                ),
            );
        }
    }
    let rule = PUBLIC_PREFIXES
        .iter()
        .map(|prefix| format!("PathPrefix(`{prefix}`)"))
        .collect::<Vec<_>>()
        .join(" || ");
    routers.insert(
        DEFAULT_ROUTER.to_owned(),
        router(&rule, REPLICAS_SERVICE, DEFAULT_PRIORITY),
    );
    let all: Vec<&str> = urls.into_iter().collect();
    if let Some(first) = all.first() {
        routers.insert(
            SIGN_IN.to_owned(),
            router("PathPrefix(`/auth/`)", SIGN_IN, SIGN_IN_PRIORITY),
        );
        services.insert(SIGN_IN.to_owned(), load_balancer(&[first]));
    }
    services.insert(REPLICAS_SERVICE.to_owned(), load_balancer(&all));
    json!({ "http": { "routers": routers, "services": services } })
}

fn router(rule: &str, service: &str, priority: u32) -> Value {
    json!({ "rule": rule, "service": service, "priority": priority })
}

fn load_balancer(urls: &[&str]) -> Value {
    let servers: Vec<Value> = urls.iter().map(|url| json!({ "url": url })).collect();
    json!({ "loadBalancer": { "servers": servers, "passHostHeader": true } })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    #[test]
    fn each_channel_goes_to_its_holder_and_the_rest_to_every_replica() {
        let a = Holdings {
            server_url: "http://10.0.0.1:8080".to_owned(),
            known: vec![id(1), id(2)],
            attached: vec![id(1)],
        };
        let b = Holdings {
            server_url: "http://10.0.0.2:8080".to_owned(),
            known: vec![id(2), id(3)],
            attached: vec![id(3)],
        };
        let config = dynamic_config(&[a.clone(), b.clone()]);
        let http = &config["http"];
        let one = format!("wow-channel-{}", id(1));
        let two = format!("wow-channel-{}", id(2));
        let three = format!("wow-channel-{}", id(3));
        assert_eq!(
            http["services"][&one]["loadBalancer"]["servers"],
            json!([{ "url": "http://10.0.0.1:8080" }])
        );
        assert_eq!(
            http["services"][&three]["loadBalancer"]["servers"],
            json!([{ "url": "http://10.0.0.2:8080" }])
        );
        // Known on both, held by neither: attaches may go to either.
        assert_eq!(
            http["services"][&two]["loadBalancer"]["servers"],
            json!([{ "url": "http://10.0.0.1:8080" }, { "url": "http://10.0.0.2:8080" }])
        );
        assert_eq!(
            http["routers"][format!("wow-ws-{}", id(2))]["rule"],
            format!("PathPrefix(`/ws/{}`)", id(2))
        );
        assert!(http["routers"][format!("wow-webhook-{}", id(2))].is_null());
        assert_eq!(
            http["routers"][format!("wow-webhook-{}", id(3))]["service"],
            three
        );
        let default = &http["routers"][DEFAULT_ROUTER];
        assert_eq!(default["priority"], 1);
        assert!(
            default["rule"]
                .as_str()
                .unwrap()
                .contains("PathPrefix(`/new`)")
        );
        assert_eq!(
            http["services"][REPLICAS_SERVICE]["loadBalancer"]["servers"]
                .as_array()
                .unwrap()
                .len(),
            2
        );
        // Sign-ins go to one replica, the same whoever answers.
        assert_eq!(http["routers"][SIGN_IN]["priority"], 50);
        assert_eq!(
            http["services"][SIGN_IN]["loadBalancer"]["servers"],
            json!([{ "url": "http://10.0.0.1:8080" }])
        );
        // The same holdings in another order give the same document.
        assert_eq!(config, dynamic_config(&[b, a]));
    }

    #[test]
    fn a_channel_held_twice_while_moving_goes_to_one_holder() {
        let replicas = [
            Holdings {
                server_url: "http://10.0.0.2:8080".to_owned(),
                known: vec![id(1)],
                attached: vec![id(1)],
            },
            Holdings {
                server_url: "http://10.0.0.1:8080".to_owned(),
                known: vec![id(1)],
                attached: vec![id(1)],
            },
        ];
        let config = dynamic_config(&replicas);
        assert_eq!(
            config["http"]["services"][format!("wow-channel-{}", id(1))]["loadBalancer"]["servers"],
            json!([{ "url": "http://10.0.0.1:8080" }])
        );
    }
}
