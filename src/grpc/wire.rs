//! Wire compatibility of the Protobuf contracts: what a change to `proto/` breaks for a peer
//! built from the released contracts. A test compares the descriptors compiled into this binary
//! with the released ones (`proto/released/`) and fails on any breaking change.
//!
//! Breaking, for the binary encoding: a message, enum, service or method removed; a field or
//! enum value whose number disappears without being reserved; a field whose number now carries
//! another type (scalar kind, message or enum type) or another cardinality (repeated or not); a
//! method whose request or response type, or streaming, changed. Not breaking: new messages,
//! fields and values; a rename (names are not on the wire, though JSON mappings see them); a
//! singular field becoming proto3 `optional` or back (the same bytes).

use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::{
    DescriptorProto, EnumDescriptorProto, FieldDescriptorProto, FileDescriptorSet,
    ServiceDescriptorProto,
};
use std::collections::BTreeMap;

/// Every breaking change from `released` to `current`, in words; empty when compatible.
pub fn breaking_changes(released: &FileDescriptorSet, current: &FileDescriptorSet) -> Vec<String> {
    let (old, new) = (Index::of(released), Index::of(current));
    let mut found = Vec::new();
    for (name, message) in &old.messages {
        match new.messages.get(name) {
            None => found.push(format!("message {name} removed")),
            Some(now) => compare_message(name, message, now, &mut found),
        }
    }
    for (name, values) in &old.enums {
        match new.enums.get(name) {
            None => found.push(format!("enum {name} removed")),
            Some(now) => compare_enum(name, values, now, &mut found),
        }
    }
    for (name, service) in &old.services {
        match new.services.get(name) {
            None => found.push(format!("service {name} removed")),
            Some(now) => compare_service(name, service, now, &mut found),
        }
    }
    found
}

/// Messages, enums and services by full name (".l2d.v1.AskRequest"), nested ones included.
#[derive(Default)]
struct Index<'a> {
    messages: BTreeMap<String, &'a DescriptorProto>,
    enums: BTreeMap<String, &'a EnumDescriptorProto>,
    services: BTreeMap<String, &'a ServiceDescriptorProto>,
}

impl<'a> Index<'a> {
    fn of(set: &'a FileDescriptorSet) -> Self {
        let mut index = Index::default();
        for file in &set.file {
            let scope = match file.package() {
                "" => String::new(),
                package => format!(".{package}"),
            };
            for message in &file.message_type {
                index.add_message(&scope, message);
            }
            for e in &file.enum_type {
                index.enums.insert(format!("{scope}.{}", e.name()), e);
            }
            for service in &file.service {
                index
                    .services
                    .insert(format!("{scope}.{}", service.name()), service);
            }
        }
        index
    }

    fn add_message(&mut self, scope: &str, message: &'a DescriptorProto) {
        let name = format!("{scope}.{}", message.name());
        for nested in &message.nested_type {
            self.add_message(&name, nested);
        }
        for e in &message.enum_type {
            self.enums.insert(format!("{name}.{}", e.name()), e);
        }
        self.messages.insert(name, message);
    }
}

fn compare_message(
    name: &str,
    old: &DescriptorProto,
    new: &DescriptorProto,
    found: &mut Vec<String>,
) {
    let reserved = |n: i32| {
        new.reserved_range
            .iter()
            .any(|r| (r.start()..r.end()).contains(&n))
    };
    for field in &old.field {
        let number = field.number();
        match new.field.iter().find(|f| f.number() == number) {
            None if reserved(number) => {}
            None => match new.field.iter().find(|f| f.name() == field.name()) {
                Some(moved) => found.push(format!(
                    "{name}.{} renumbered from {number} to {}",
                    field.name(),
                    moved.number()
                )),
                None => found.push(format!(
                    "{name}.{} ({number}) removed without reserving its number",
                    field.name()
                )),
            },
            Some(now) if shape(now) != shape(field) => found.push(format!(
                "{name}.{} ({number}) changed from {} to {}",
                field.name(),
                shape(field),
                shape(now)
            )),
            Some(_) => {}
        }
    }
}

/// What a field's number carries on the wire: its cardinality and type.
fn shape(field: &FieldDescriptorProto) -> String {
    let repeated = if field.label() == Label::Repeated {
        "repeated "
    } else {
        ""
    };
    match field.r#type() {
        Type::Message | Type::Enum | Type::Group => format!("{repeated}{}", field.type_name()),
        scalar => format!("{repeated}{}", scalar.as_str_name()),
    }
}

fn compare_enum(
    name: &str,
    old: &EnumDescriptorProto,
    new: &EnumDescriptorProto,
    found: &mut Vec<String>,
) {
    let reserved = |n: i32| {
        new.reserved_range
            .iter()
            .any(|r| (r.start()..=r.end()).contains(&n))
    };
    for value in &old.value {
        let number = value.number();
        if !new.value.iter().any(|v| v.number() == number) && !reserved(number) {
            found.push(format!(
                "{name}.{} ({number}) removed without reserving its number",
                value.name()
            ));
        }
    }
}

fn compare_service(
    name: &str,
    old: &ServiceDescriptorProto,
    new: &ServiceDescriptorProto,
    found: &mut Vec<String>,
) {
    for method in &old.method {
        let signature = |m: &prost_types::MethodDescriptorProto| {
            format!(
                "({}{}) returns ({}{})",
                if m.client_streaming() { "stream " } else { "" },
                m.input_type(),
                if m.server_streaming() { "stream " } else { "" },
                m.output_type()
            )
        };
        match new.method.iter().find(|m| m.name() == method.name()) {
            None => found.push(format!("{name}.{} removed", method.name())),
            Some(now) if signature(now) != signature(method) => found.push(format!(
                "{name}.{} changed from {} to {}",
                method.name(),
                signature(method),
                signature(now)
            )),
            Some(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    fn current() -> FileDescriptorSet {
        FileDescriptorSet::decode(crate::grpc::pb::FILE_DESCRIPTOR_SET).unwrap()
    }

    fn message<'a>(set: &'a mut FileDescriptorSet, name: &str) -> &'a mut DescriptorProto {
        set.file
            .iter_mut()
            .flat_map(|f| f.message_type.iter_mut())
            .find(|m| m.name() == name)
            .unwrap()
    }

    /// The released contracts, as `proto/released/l2d-v1.binpb` holds them (an encoded
    /// `FileDescriptorSet`). At a release, write the current ones there:
    /// `L2D_RELEASE_CONTRACTS=1 cargo test --lib the_contracts_keep_the_released_wire`.
    #[test]
    fn the_contracts_keep_the_released_wire() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("proto/released/l2d-v1.binpb");
        if std::env::var_os("L2D_RELEASE_CONTRACTS").is_some() {
            std::fs::write(&path, crate::grpc::pb::FILE_DESCRIPTOR_SET).unwrap();
        }
        let released = FileDescriptorSet::decode(std::fs::read(&path).unwrap().as_slice()).unwrap();
        let broken = breaking_changes(&released, &current());
        assert!(
            broken.is_empty(),
            "proto/ breaks the released wire contract:\n  {}",
            broken.join("\n  ")
        );
    }

    #[test]
    fn the_contracts_are_compatible_with_themselves() {
        assert_eq!(
            breaking_changes(&current(), &current()),
            Vec::<String>::new()
        );
    }

    #[test]
    fn removing_renumbering_or_retyping_a_field_breaks_and_adding_one_does_not() {
        let released = current();
        let field = |set: &mut FileDescriptorSet, name: &str| -> FieldDescriptorProto {
            message(set, "AskRequest")
                .field
                .iter()
                .find(|f| f.name() == name)
                .unwrap()
                .clone()
        };

        let mut removed = current();
        message(&mut removed, "AskRequest")
            .field
            .retain(|f| f.name() != "budget");
        assert_eq!(
            breaking_changes(&released, &removed),
            [".l2d.v1.AskRequest.budget (4) removed without reserving its number"]
        );
        // Removed and reserved: fine.
        message(&mut removed, "AskRequest").reserved_range.push(
            prost_types::descriptor_proto::ReservedRange {
                start: Some(4),
                end: Some(5),
            },
        );
        assert!(breaking_changes(&released, &removed).is_empty());

        let mut renumbered = current();
        let mut budget = field(&mut renumbered, "budget");
        budget.number = Some(16);
        let ask = message(&mut renumbered, "AskRequest");
        ask.field.retain(|f| f.name() != "budget");
        ask.field.push(budget);
        assert_eq!(
            breaking_changes(&released, &renumbered),
            [".l2d.v1.AskRequest.budget renumbered from 4 to 16"]
        );

        let mut retyped = current();
        for f in &mut message(&mut retyped, "AskRequest").field {
            if f.name() == "budget" {
                f.r#type = Some(Type::Float as i32);
            }
            if f.name() == "question" {
                f.label = Some(Label::Repeated as i32);
            }
        }
        assert_eq!(
            breaking_changes(&released, &retyped),
            [
                ".l2d.v1.AskRequest.question (1) changed from TYPE_STRING to repeated TYPE_STRING",
                ".l2d.v1.AskRequest.budget (4) changed from TYPE_DOUBLE to TYPE_FLOAT"
            ]
        );

        // A new field, a rename and optional presence are not on the wire.
        let mut grown = current();
        let mut extra = field(&mut grown, "budget");
        extra.name = Some("priority".into());
        extra.number = Some(20);
        let ask = message(&mut grown, "AskRequest");
        ask.field.push(extra);
        for f in &mut ask.field {
            if f.name() == "question" {
                f.name = Some("query".into());
                f.proto3_optional = Some(true);
            }
        }
        assert!(breaking_changes(&released, &grown).is_empty());
    }

    #[test]
    fn removing_a_method_or_changing_its_types_breaks() {
        let released = current();
        let mut changed = current();
        let router = changed
            .file
            .iter_mut()
            .flat_map(|f| f.service.iter_mut())
            .find(|s| s.name() == "Router")
            .unwrap();
        router.method[0].output_type = Some(".l2d.v1.AnswerResponse".into());
        assert_eq!(
            breaking_changes(&released, &changed),
            [
                ".l2d.v1.Router.Ask changed from (.l2d.v1.AskRequest) returns \
              (.l2d.v1.AskResponse) to (.l2d.v1.AskRequest) returns (.l2d.v1.AnswerResponse)"
            ]
        );
        let mut gone = current();
        for f in &mut gone.file {
            f.message_type.retain(|m| m.name() != "Span");
        }
        assert!(
            breaking_changes(&released, &gone).contains(&"message .l2d.v1.Span removed".into())
        );
    }
}
