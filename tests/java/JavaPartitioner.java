// Produces every key of a file with kafka-clients' default partitioner and prints
// "KEY<TAB>PARTITION" as the broker acknowledged it. Compiled and run by tests/partitioning.rs.
import java.nio.file.Files;
import java.nio.file.Paths;
import java.util.List;
import java.util.Properties;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.atomic.AtomicReference;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.common.serialization.StringSerializer;

public class JavaPartitioner {
    public static void main(String[] args) throws Exception {
        String bootstrap = args[0], topic = args[1];
        List<String> keys = Files.readAllLines(Paths.get(args[2]));
        Properties props = new Properties();
        props.put(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        props.put(ProducerConfig.KEY_SERIALIZER_CLASS_CONFIG, StringSerializer.class.getName());
        props.put(ProducerConfig.VALUE_SERIALIZER_CLASS_CONFIG, StringSerializer.class.getName());
        props.put(ProducerConfig.ACKS_CONFIG, "all");
        ConcurrentHashMap<String, Integer> partitions = new ConcurrentHashMap<>();
        AtomicReference<Exception> failure = new AtomicReference<>();
        try (KafkaProducer<String, String> producer = new KafkaProducer<>(props)) {
            for (String key : keys) {
                producer.send(new ProducerRecord<>(topic, key, "v"), (md, e) -> {
                    if (e != null) failure.set(e); else partitions.put(key, md.partition());
                });
            }
            producer.flush();
        }
        if (failure.get() != null) throw failure.get();
        StringBuilder out = new StringBuilder();
        for (String key : keys) out.append(key).append('\t').append(partitions.get(key)).append('\n');
        System.out.print(out);
    }
}
