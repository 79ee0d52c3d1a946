//! `-D command name value`: MQTT 5 properties, with Mosquitto's command and property
//! names (`-D publish user-property key value`, `-D connect session-expiry-interval 300`).

use bytes::Bytes;
use midge_client::midge_proto::{
    ConnectProperties, DisconnectProperties, PublishProperties, SubscribeProperties, UserProperty,
    WillProperties,
};

/// The properties given on the command line, per packet.
#[derive(Debug, Default)]
pub struct Properties {
    pub connect: ConnectProperties,
    pub publish: PublishProperties,
    pub subscribe: SubscribeProperties,
    pub disconnect: DisconnectProperties,
    pub will: WillProperties,
}

/// Parses every `-D` group; `commands` are the packets this tool sends.
/// `words` are the values of every `-D` in order; each group is a command, a name and one
/// value, or two for `user-property`.
pub fn parse(words: &[String], commands: &[&str]) -> Result<Properties, String> {
    let mut properties = Properties::default();
    let mut rest = words;
    while !rest.is_empty() {
        let [command, name, after @ ..] = rest else {
            return Err("-D needs a command, a property name and a value".to_owned());
        };
        let count = if name == "user-property" { 2 } else { 1 };
        let values = after.get(..count).unwrap_or(after);
        rest = &after[values.len()..];
        if !commands.contains(&command.as_str()) {
            return Err(format!(
                "-D {command}: not a packet this tool sends (use one of: {})",
                commands.join(", ")
            ));
        }
        properties.set(command, name, values)?;
    }
    Ok(properties)
}

fn one<'a>(name: &str, values: &'a [String]) -> Result<&'a str, String> {
    match values {
        [value] => Ok(value),
        _ => Err(format!("-D ... {name}: expects exactly one value")),
    }
}

fn number<T: std::str::FromStr>(name: &str, values: &[String]) -> Result<T, String> {
    let value = one(name, values)?;
    value
        .parse()
        .map_err(|_| format!("-D ... {name}: {value:?} is not a valid number for it"))
}

fn flag(name: &str, values: &[String]) -> Result<bool, String> {
    match number::<u8>(name, values)? {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err(format!("-D ... {name}: must be 0 or 1")),
    }
}

fn pair(name: &str, values: &[String]) -> Result<UserProperty, String> {
    match values {
        [key, value] => Ok((key.clone(), value.clone())),
        _ => Err(format!("-D ... {name}: expects a name and a value")),
    }
}

impl Properties {
    fn set(&mut self, command: &str, name: &str, values: &[String]) -> Result<(), String> {
        let not_for = || format!("-D {command} {name}: not a property of {command}");
        match (command, name) {
            ("connect", "session-expiry-interval") => {
                self.connect.session_expiry_interval = Some(number(name, values)?);
            }
            ("connect", "receive-maximum") => {
                self.connect.receive_maximum = Some(nonzero(name, number(name, values)?)?);
            }
            ("connect", "maximum-packet-size") => {
                self.connect.maximum_packet_size = Some(nonzero(name, number(name, values)?)?);
            }
            ("connect", "topic-alias-maximum") => {
                self.connect.topic_alias_maximum = Some(number(name, values)?);
            }
            ("connect", "request-problem-information") => {
                self.connect.request_problem_information = Some(flag(name, values)?);
            }
            ("connect", "request-response-information") => {
                self.connect.request_response_information = Some(flag(name, values)?);
            }
            ("connect", "user-property") => self.connect.user_properties.push(pair(name, values)?),
            ("publish", "payload-format-indicator") => {
                self.publish.payload_format_indicator = Some(u8::from(flag(name, values)?));
            }
            ("publish", "message-expiry-interval") => {
                self.publish.message_expiry_interval = Some(number(name, values)?);
            }
            ("publish", "content-type") => {
                self.publish.content_type = Some(one(name, values)?.to_owned());
            }
            ("publish", "response-topic") => {
                self.publish.response_topic = Some(one(name, values)?.to_owned());
            }
            ("publish", "correlation-data") => {
                self.publish.correlation_data =
                    Some(Bytes::from(one(name, values)?.as_bytes().to_vec()));
            }
            ("publish", "user-property") => self.publish.user_properties.push(pair(name, values)?),
            ("subscribe", "subscription-identifier") => {
                let id: u32 = number(name, values)?;
                if id == 0 || id > midge_client::midge_proto::MAX_SUBSCRIPTION_IDENTIFIER {
                    return Err(format!("-D subscribe {name}: must be 1 to 268435455"));
                }
                self.subscribe.subscription_identifier = Some(id);
            }
            ("subscribe", "user-property") => {
                self.subscribe.user_properties.push(pair(name, values)?);
            }
            ("disconnect", "session-expiry-interval") => {
                self.disconnect.session_expiry_interval = Some(number(name, values)?);
            }
            ("disconnect", "reason-string") => {
                self.disconnect.reason_string = Some(one(name, values)?.to_owned());
            }
            ("disconnect", "user-property") => {
                self.disconnect.user_properties.push(pair(name, values)?);
            }
            ("will", "will-delay-interval") => {
                self.will.will_delay_interval = Some(number(name, values)?);
            }
            ("will", "payload-format-indicator") => {
                self.will.payload_format_indicator = Some(u8::from(flag(name, values)?));
            }
            ("will", "message-expiry-interval") => {
                self.will.message_expiry_interval = Some(number(name, values)?);
            }
            ("will", "content-type") => {
                self.will.content_type = Some(one(name, values)?.to_owned())
            }
            ("will", "response-topic") => {
                self.will.response_topic = Some(one(name, values)?.to_owned());
            }
            ("will", "correlation-data") => {
                self.will.correlation_data =
                    Some(Bytes::from(one(name, values)?.as_bytes().to_vec()));
            }
            ("will", "user-property") => self.will.user_properties.push(pair(name, values)?),
            _ => return Err(not_for()),
        }
        Ok(())
    }
}

fn nonzero<T: PartialEq + Default>(name: &str, value: T) -> Result<T, String> {
    if value == T::default() {
        Err(format!("-D connect {name}: must not be 0"))
    } else {
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(words: &[&str]) -> Vec<String> {
        words.iter().map(|w| (*w).to_owned()).collect()
    }

    fn flat(groups: &[Vec<String>]) -> Vec<String> {
        groups.concat()
    }

    #[test]
    fn mosquitto_style_properties_land_in_their_packets() {
        let parsed = parse(
            &flat(&[
                group(&["publish", "message-expiry-interval", "60"]),
                group(&["publish", "user-property", "k", "v"]),
                group(&["publish", "user-property", "k", "w"]),
                group(&["connect", "session-expiry-interval", "300"]),
                group(&["will", "will-delay-interval", "5"]),
                group(&["disconnect", "session-expiry-interval", "0"]),
            ]),
            &["connect", "publish", "disconnect", "will"],
        )
        .unwrap();
        assert_eq!(parsed.publish.message_expiry_interval, Some(60));
        assert_eq!(
            parsed.publish.user_properties,
            vec![("k".into(), "v".into()), ("k".into(), "w".into())]
        );
        assert_eq!(parsed.connect.session_expiry_interval, Some(300));
        assert_eq!(parsed.will.will_delay_interval, Some(5));
        assert_eq!(parsed.disconnect.session_expiry_interval, Some(0));
    }

    #[test]
    fn wrong_packets_names_and_values_are_refused() {
        let commands = ["connect", "subscribe"];
        let error = |words: &[&str]| parse(&group(words), &commands).unwrap_err();
        assert!(error(&["publish", "content-type", "x"]).contains("not a packet this tool sends"));
        assert!(error(&["connect", "content-type", "x"]).contains("not a property of connect"));
        assert!(error(&["connect", "receive-maximum", "0"]).contains("must not be 0"));
        assert!(error(&["connect", "receive-maximum", "x"]).contains("not a valid number"));
        assert!(error(&["connect", "user-property", "k"]).contains("a name and a value"));
        assert!(error(&["connect", "receive-maximum"]).contains("exactly one value"));
        assert!(error(&["subscribe", "subscription-identifier", "0"]).contains("1 to"));
    }
}
